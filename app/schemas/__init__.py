"""Pydantic request/response models of the HTTP API (no torch, no SQL)."""
