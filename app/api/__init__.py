"""HTTP layer: thin routes over the services (no torch, no SQL text)."""
