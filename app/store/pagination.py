"""Keyset pagination by id with opaque cursors, and the shared argument checks of list queries."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute, Session

from app.store.errors import InvalidCursor

T = TypeVar("T")
Order = Literal["asc", "desc"]

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
ORDERS = ("asc", "desc")
MAX_CURSOR_CHARS = 200  # issued cursors are ~40 characters


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list; `next_cursor` fetches the next one and is None on the last page."""

    items: list[T] = field(default_factory=list)
    next_cursor: str | None = None


def check_limit(limit: Any) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be an integer from 1 to {MAX_LIMIT}, got {limit!r}")
    return limit


def check_order(order: Any) -> Order:
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; one of {list(ORDERS)}")
    return order


def encode_cursor(*, kind: str, order: Order, after_id: int) -> str:
    raw = json.dumps({"k": kind, "o": order, "id": after_id}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, *, kind: str, order: Order) -> int:
    """The id a cursor continues after; InvalidCursor says what is wrong with a bad one."""

    def invalid(reason: str) -> InvalidCursor:
        shown = cursor if len(cursor) <= 80 else cursor[:77] + "..."
        return InvalidCursor(
            f"invalid cursor {shown!r}: {reason}; pass the next_cursor of the previous page "
            "unchanged, or no cursor for the first page"
        )

    if not isinstance(cursor, str) or not cursor:
        raise InvalidCursor(f"invalid cursor {cursor!r}: expected a non-empty string")
    if len(cursor) > MAX_CURSOR_CHARS:
        raise invalid("too long to be a cursor this service issued")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError):
        raise invalid("not a cursor this service issued") from None
    if not isinstance(data, dict) or set(data) != {"k", "o", "id"}:
        raise invalid("not a cursor this service issued")
    after_id = data["id"]
    if isinstance(after_id, bool) or not isinstance(after_id, int) or after_id < 0:
        raise invalid("not a cursor this service issued")
    if data["k"] != kind:
        raise invalid(f"it belongs to the {data['k']!r} list, not {kind!r}")
    if data["o"] != order:
        raise invalid(f"it was issued for order={data['o']!r}, not order={order!r}")
    return after_id


def paginate(
    session: Session,
    stmt: Select[tuple[T]],
    id_column: InstrumentedAttribute[int],
    *,
    kind: str,
    order: Order,
    limit: int,
    cursor: str | None,
) -> Page[T]:
    """Run `stmt` one page at a time, keyed on `id_column` (unique, never reused)."""
    limit = check_limit(limit)
    order = check_order(order)
    if cursor is not None:
        after_id = decode_cursor(cursor, kind=kind, order=order)
        stmt = stmt.where(id_column < after_id if order == "desc" else id_column > after_id)
    stmt = stmt.order_by(id_column.desc() if order == "desc" else id_column.asc())
    # One row more than asked tells whether there is a next page without a COUNT.
    rows = list(session.scalars(stmt.limit(limit + 1)).all())
    if len(rows) <= limit:
        return Page(items=rows, next_cursor=None)
    items = rows[:limit]
    last_id = getattr(items[-1], id_column.key)
    return Page(items=items, next_cursor=encode_cursor(kind=kind, order=order, after_id=last_id))
