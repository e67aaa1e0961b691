"""The audit log: append and read, never change or remove (see the guards in models.py)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import func, insert, or_, select
from sqlalchemy.orm import Session

from app.domain import AuditAction
from app.store.models import AuditEvent
from app.store.pagination import DEFAULT_LIMIT, Order, Page, paginate
from app.store.types import coerce_enum, require_aware, utcnow


def append_audit(
    session: Session,
    *,
    actor: str,
    action: AuditAction | str,
    edit_id: int | None = None,
    expert_id: int | None = None,
    training_run_id: int | None = None,
    payload: dict[str, Any] | None = None,
    on_behalf_of: str | None = None,
) -> AuditEvent:
    """Add one event; it is committed together with the change it describes. `on_behalf_of`
    (whom an API key's holder says it acts for) is kept in the payload; `actor` stays the key."""
    payload = dict(payload or {})
    if on_behalf_of is not None:
        payload["on_behalf_of"] = on_behalf_of
    event = AuditEvent(
        at=utcnow(),
        actor=actor,
        action=coerce_enum(AuditAction, action, name="action"),
        edit_id=edit_id,
        expert_id=expert_id,
        training_run_id=training_run_id,
        payload=payload,
    )
    session.add(event)
    session.flush()
    return event


@dataclass(frozen=True)
class NewAuditEvent:
    """One event of `append_audits`: what it is about and its payload."""

    edit_id: int | None = None
    expert_id: int | None = None
    training_run_id: int | None = None
    payload: dict[str, Any] = field(default_factory=dict)


def append_audits(
    session: Session,
    *,
    actor: str,
    action: AuditAction | str,
    events: Sequence[NewAuditEvent],
    on_behalf_of: str | None = None,
) -> None:
    """`append_audit` for many events of one action at once: one INSERT for all of them (a bulk
    submission writes one event per edit), ids in the given order, one timestamp."""
    if not events:
        return
    action = coerce_enum(AuditAction, action, name="action")
    at = utcnow()
    extra = {} if on_behalf_of is None else {"on_behalf_of": on_behalf_of}
    rows = [
        {
            "at": at,
            "actor": actor,
            "action": action,
            "edit_id": e.edit_id,
            "expert_id": e.expert_id,
            "training_run_id": e.training_run_id,
            "payload": {**e.payload, **extra},
        }
        for e in events
    ]
    session.execute(insert(AuditEvent), rows)


def list_audit(
    session: Session,
    *,
    action: AuditAction | str | None = None,
    actor: str | None = None,
    edit_id: int | None = None,
    expert_id: int | None = None,
    training_run_id: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    order: Order = "desc",
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> Page[AuditEvent]:
    """Audit events in id (= time) order: "desc" (newest first) for the log, "asc" for a history.

    `since` is inclusive and `until` exclusive. A cursor continues the order it was issued for.
    """
    stmt = select(AuditEvent)
    if action is not None:
        stmt = stmt.where(AuditEvent.action == coerce_enum(AuditAction, action, name="action"))
    if actor:
        stmt = stmt.where(AuditEvent.actor == actor)
    if edit_id is not None:
        stmt = stmt.where(AuditEvent.edit_id == edit_id)
    if expert_id is not None:
        stmt = stmt.where(AuditEvent.expert_id == expert_id)
    if training_run_id is not None:
        stmt = stmt.where(AuditEvent.training_run_id == training_run_id)
    if since is not None:
        stmt = stmt.where(AuditEvent.at >= require_aware(since, name="since"))
    if until is not None:
        stmt = stmt.where(AuditEvent.at < require_aware(until, name="until"))
    return paginate(session, stmt, AuditEvent.id, kind="audit", order=order, limit=limit, cursor=cursor)


def latest_audit_id(session: Session) -> int:
    """The id of the newest audit event; 0 when the log is empty."""
    return session.scalar(select(func.max(AuditEvent.id))) or 0


def audit_after(session: Session, *, after: int, also: Collection[int] = (), limit: int = DEFAULT_LIMIT) -> list[AuditEvent]:
    """Up to `limit` events with id > `after`, and those of the ids `also` (ids a reader saw
    missing: on PostgreSQL a transaction can commit after another that took a later id), oldest
    first."""
    condition = AuditEvent.id > after
    if also:
        condition = or_(condition, AuditEvent.id.in_(list(also)))
    return list(session.scalars(select(AuditEvent).where(condition).order_by(AuditEvent.id).limit(limit)))


def count_audit_by_day(session: Session, *, action: AuditAction | str, since: datetime, until: datetime) -> dict[date, int]:
    """How many events of `action` each UTC day in [since, until) saw; days without one are absent."""
    if session.get_bind().dialect.name == "postgresql":
        day = func.to_char(func.timezone("UTC", AuditEvent.at), "YYYY-MM-DD")
    else:  # SQLite keeps naive UTC text (UTCDateTime)
        day = func.strftime("%Y-%m-%d", AuditEvent.at)
    stmt = (
        select(day, func.count())
        .where(
            AuditEvent.action == coerce_enum(AuditAction, action, name="action"),
            AuditEvent.at >= require_aware(since, name="since"),
            AuditEvent.at < require_aware(until, name="until"),
        )
        .group_by(day)
    )
    return {date.fromisoformat(text): count for text, count in session.execute(stmt)}
