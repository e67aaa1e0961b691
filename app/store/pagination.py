"""Keyset pagination by id with `<list>.<id>` cursors, and the shared argument checks of list queries."""

from __future__ import annotations

import re
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
MAX_CURSOR_CHARS = 200  # issued cursors are at most 24 characters
MAX_ID = 2**31 - 1  # ids are 32-bit integers in both databases
CURSOR_KINDS = ("edits", "audit", "training_runs")


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


def _up_to(maximum: int) -> str:
    """A regular expression for the decimal integers 1..maximum, without leading zeros."""
    digits = str(maximum)

    def any_digits(n: int) -> str:
        return "" if n == 0 else "[0-9]" if n == 1 else f"[0-9]{{{n}}}"

    def digit_range(low: int, high: int) -> str:
        return str(low) if low == high else f"[{low}-{high}]"

    # Fewer digits, then: the same leading digits as maximum and one smaller digit, then maximum.
    parts = [f"[1-9][0-9]{{0,{len(digits) - 2}}}"] if len(digits) > 1 else []
    for i, d in enumerate(digits):
        low = 1 if i == 0 else 0
        if int(d) > low:
            parts.append(f"{digits[:i]}{digit_range(low, int(d) - 1)}{any_digits(len(digits) - i - 1)}")
    parts.append(digits)
    return "|".join(parts)


# A cursor is `<list>.<id>`: the id of the last item of the previous page, in the list it came
# from. Ids are 32-bit integers in both databases, so a cursor naming a larger one is refused.
_CURSOR_RE = re.compile(r"([a-z_]+)\.([0-9]+)")
_ID_PATTERN = _up_to(MAX_ID)


def cursor_pattern(kind: str) -> str:
    """The exact form of this list's cursors, as an (ECMA and Python) regular expression;
    it also matches "" (as the services read it: no cursor, the first page)."""
    _check_kind(kind)
    return rf"^(?:{kind}\.(?:{_ID_PATTERN}))?$"


def _check_kind(kind: str) -> None:
    if kind not in CURSOR_KINDS:
        raise ValueError(f"unknown cursor kind {kind!r}; one of {list(CURSOR_KINDS)}")


def encode_cursor(*, kind: str, after_id: int) -> str:
    _check_kind(kind)
    return f"{kind}.{after_id}"


def decode_cursor(cursor: str, *, kind: str) -> int:
    """The id a cursor continues after; InvalidCursor says what is wrong with a bad one."""

    def invalid(reason: str) -> InvalidCursor:
        shown = cursor if len(cursor) <= 80 else cursor[:77] + "..."
        return InvalidCursor(
            f"invalid cursor {shown!r}: {reason}; pass the next_cursor of the previous page unchanged, or no cursor for the first page"
        )

    if not isinstance(cursor, str) or not cursor:
        raise InvalidCursor(f"invalid cursor {cursor!r}: expected a non-empty string")
    if len(cursor) > MAX_CURSOR_CHARS:
        raise invalid("too long to be a cursor this service issued")
    match = _CURSOR_RE.fullmatch(cursor)
    if match is None:
        raise invalid(f"not a cursor this service issued (they look like '{kind}.123')")
    cursor_kind, digits = match.groups()
    if cursor_kind != kind:
        raise invalid(f"it belongs to the {cursor_kind!r} list, not {kind!r}")
    if digits.startswith("0"):
        raise invalid("its id has leading zeros or is 0; ids start at 1")
    after_id = int(digits)
    if after_id > MAX_ID:
        raise invalid(f"its id {after_id} is out of range; ids are 1 to {MAX_ID} (32-bit)")
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
        after_id = decode_cursor(cursor, kind=kind)
        stmt = stmt.where(id_column < after_id if order == "desc" else id_column > after_id)
    stmt = stmt.order_by(id_column.desc() if order == "desc" else id_column.asc())
    # One row more than asked tells whether there is a next page without a COUNT.
    rows = list(session.scalars(stmt.limit(limit + 1)).all())
    if len(rows) <= limit:
        return Page(items=rows, next_cursor=None)
    items = rows[:limit]
    last_id = getattr(items[-1], id_column.key)
    return Page(items=items, next_cursor=encode_cursor(kind=kind, after_id=last_id))
