"""Input checks shared by the use cases; each failure is an InvalidInput naming the value."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from app import store
from app.errors import Conflict, InvalidCursor, InvalidInput, NotFound
from app.store.pagination import MAX_ID as MAX_ID  # ids are 32-bit in both databases

ACTOR_MAX_CHARS = 100
ACTOR_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:+/ -]*")
DEFAULT_ACTOR = "anonymous"
SYSTEM_ACTOR = "system"
SCHEDULER_ACTOR = "scheduler"


def check_text(value: Any, *, field: str, max_chars: int) -> str:
    """A non-blank string of at most `max_chars` characters that both databases can store."""
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be a string, got {type(value).__name__}", param=field)
    if not value.strip():
        raise InvalidInput(f"{field} must not be empty or whitespace, got {value!r}", param=field)
    return check_storable(value, field=field, max_chars=max_chars)


def check_storable(value: str, *, field: str, max_chars: int) -> str:
    """Length, NUL (PostgreSQL text refuses it) and lone surrogates (not encodable as UTF-8)."""
    if len(value) > max_chars:
        raise InvalidInput(f"{field} is {len(value)} characters long; at most {max_chars} are allowed", param=field)
    if "\x00" in value:
        raise InvalidInput(f"{field} must not contain NUL characters", param=field)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{field} is not valid Unicode text (it holds a lone surrogate)", param=field) from None
    return value


def check_filter(value: str | None, *, field: str, max_chars: int) -> str | None:
    """An optional text filter from a query string; blank means no filter (if it is storable)."""
    if value is None:
        return None
    check_storable(value, field=field, max_chars=max_chars)
    return value if value.strip() else None


def check_actor(value: str | None) -> str:
    """The X-Actor header: who is acting, recorded in the audit log."""
    if value is None:
        return DEFAULT_ACTOR
    if len(value) > ACTOR_MAX_CHARS or not ACTOR_RE.fullmatch(value):
        raise InvalidInput(
            f"header 'X-Actor' must be 1-{ACTOR_MAX_CHARS} characters: letters, digits, space "
            f"and . _ @ : + / - (starting with a letter or digit), got {value[:ACTOR_MAX_CHARS]!r}"
        )
    return value


def to_utc(value: datetime | None, *, field: str) -> datetime | None:
    """An aware UTC datetime; a value without a zone is taken as UTC. A bound whose UTC time
    falls outside years 1-9999 (e.g. 0001-01-01T00:00+05:00) is clamped to the nearest end:
    every stored time lies between them, so the filter means the same."""
    if value is None:
        return None
    offset = value.utcoffset()
    if offset is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        return (datetime.min if offset > timedelta(0) else datetime.max).replace(tzinfo=UTC)


@contextmanager
def store_errors() -> Iterator[None]:
    """Map the store's errors onto ServiceErrors (their messages already name the values)."""
    try:
        yield
    except store.InvalidCursor as exc:
        raise InvalidCursor(str(exc)) from None
    except store.RecordNotFound as exc:
        raise NotFound(str(exc)) from None
    except store.InvalidTransition as exc:
        raise Conflict(str(exc)) from None
    except (ValueError, TypeError) as exc:
        raise InvalidInput(str(exc)) from None
