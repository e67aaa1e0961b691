"""Column types that behave the same on SQLite and PostgreSQL: aware UTC datetimes, StrEnums, JSON."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import JSON, DateTime, Dialect, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator

E = TypeVar("E", bound=StrEnum)

# JSONB on PostgreSQL (indexable, compact), plain JSON text elsewhere.
JSONType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    """The current time as an aware UTC datetime (the only clock the store uses)."""
    return datetime.now(UTC)


def require_aware(value: datetime, *, name: str) -> datetime:
    """Return `value` in UTC; a naive datetime is refused because its zone would be a guess."""
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {value.isoformat()!r}")
    return value.astimezone(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on every dialect.

    PostgreSQL stores `timestamptz`; SQLite has no zone support, so values are stored as naive
    UTC text (comparisons stay correct because every value is UTC) and re-labelled UTC on read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = require_aware(value, name="datetime value")
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class StrEnumType(TypeDecorator[StrEnum]):
    """A StrEnum stored as its plain string value (no native ENUM: adding a member needs no migration)."""

    impl = String
    cache_ok = True

    def __init__(self, enum_cls: type[StrEnum], length: int = 32) -> None:
        super().__init__(length)
        self.enum_cls = enum_cls
        self.length = length  # part of the statement-cache key, with enum_cls

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return coerce_enum(self.enum_cls, value, name=self.enum_cls.__name__).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> StrEnum | None:
        if value is None:
            return None
        return self.enum_cls(value)


def coerce_enum(enum_cls: type[E], value: Any, *, name: str = "status") -> E:
    """`value` as a member of `enum_cls`; a clear ValueError names the bad value and the allowed ones."""
    if isinstance(value, enum_cls):
        return value
    try:
        return enum_cls(value)
    except ValueError:
        allowed = sorted(member.value for member in enum_cls)
        raise ValueError(f"unknown {name} {value!r}; one of {allowed}") from None
