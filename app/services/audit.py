"""Reading the append-only audit log (nothing here, or anywhere, changes or removes an event)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy.orm import Session

from app import store
from app.domain import AuditAction
from app.services.checks import ACTOR_MAX_CHARS, check_filter, store_errors, to_utc


def list_audit(
    session: Session,
    *,
    action: AuditAction | None = None,
    actor: str | None = None,
    edit_id: int | None = None,
    expert_id: int | None = None,
    training_run_id: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    order: str = "desc",
    limit: int = store.DEFAULT_LIMIT,
    cursor: str | None = None,
) -> store.Page[store.AuditEvent]:
    """Events newest first (or oldest first with order="asc"); `since` inclusive, `until` exclusive."""
    actor = check_filter(actor, field="actor", max_chars=ACTOR_MAX_CHARS)
    with store_errors():
        return store.list_audit(
            session,
            action=action,
            actor=actor,
            edit_id=edit_id,
            expert_id=expert_id,
            training_run_id=training_run_id,
            since=to_utc(since, field="since"),
            until=to_utc(until, field="until"),
            order=order,  # type: ignore[arg-type]  # checked by the store
            limit=limit,
            cursor=cursor or None,
        )


MAX_DAYS = 366


@dataclass(frozen=True)
class DailyCount:
    day: date
    count: int


def daily_counts(session: Session, *, action: AuditAction, days: int, today: date | None = None) -> list[DailyCount]:
    """Events of `action` on each of the last `days` UTC days, oldest first, today included
    (a day without one counts 0): e.g. edits applied per day."""
    last = today or datetime.now(UTC).date()
    first = last - timedelta(days=days - 1)
    since = datetime.combine(first, time.min, tzinfo=UTC)
    counts = store.count_audit_by_day(session, action=action, since=since, until=since + timedelta(days=days))
    return [DailyCount(day, counts.get(day, 0)) for day in (first + timedelta(days=i) for i in range(days))]
