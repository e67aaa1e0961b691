"""lemoe-server: editing-as-a-service for language models (LEMoE adaptors behind HTTP)."""
