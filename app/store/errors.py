"""Errors the store raises; the service layer maps them onto HTTP errors."""

from __future__ import annotations


class InvalidCursor(ValueError):
    """A pagination cursor that this list did not produce (garbage, edited, or from another list)."""


class RecordNotFound(LookupError):
    """A row that a change refers to does not exist; the message names the table and the ids."""


class InvalidTransition(ValueError):
    """A status change that the row's current status does not allow (e.g. starting a finished run)."""


class AuditLogIsAppendOnly(RuntimeError):
    """Code tried to change or remove an audit event."""
