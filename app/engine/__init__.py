"""The engine room: loads the model and owns the live expert stack (no HTTP, no SQL)."""
