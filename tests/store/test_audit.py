"""The audit log: append, list with filters and both orders, and nothing can change it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, delete, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from app.domain import AuditAction
from app.store import (
    AuditEvent,
    AuditLogIsAppendOnly,
    InvalidCursor,
    NewAuditEvent,
    append_audit,
    append_audits,
    list_audit,
)


def test_append_audit_stores_every_field(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as s:
        event = append_audit(
            s,
            actor="alice",
            action=AuditAction.EDIT_SUBMITTED,
            edit_id=7,
            expert_id=3,
            training_run_id=2,
            payload={"prompt": "The capital of France is", "rephrases": 2, "status": "pending"},
        )
        s.commit()
    with session_factory() as s:
        loaded = s.get(AuditEvent, event.id)
    assert loaded is not None
    assert (loaded.actor, loaded.action) == ("alice", AuditAction.EDIT_SUBMITTED)
    assert (loaded.edit_id, loaded.expert_id, loaded.training_run_id) == (7, 3, 2)
    assert loaded.payload == {"prompt": "The capital of France is", "rephrases": 2, "status": "pending"}
    assert loaded.at.tzinfo is not None and loaded.at.utcoffset() == timedelta(0)


def test_append_audit_ids_are_not_foreign_keys(session: Session) -> None:
    # No such edit, expert or run: the log must still accept the event.
    event = append_audit(session, actor="system", action="edit.failed", edit_id=10**6, expert_id=10**6)
    assert event.id is not None and event.payload == {}


def test_append_audit_validates_arguments(session: Session) -> None:
    with pytest.raises(ValueError, match=r"unknown action 'edit.deleted'; one of \[.*'edit.applied'.*\]"):
        append_audit(session, actor="a", action="edit.deleted")
    assert list_audit(session).items == []


def _log(session: Session) -> list[AuditEvent]:
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    rows = [
        ("alice", AuditAction.EDIT_SUBMITTED, 1, None, None),
        ("alice", AuditAction.EDIT_SUBMITTED, 2, None, None),
        ("worker", AuditAction.RUN_CREATED, None, None, 1),
        ("worker", AuditAction.EDIT_PLANNED, 1, None, 1),
        ("worker", AuditAction.EXPERT_REGISTERED, None, 5, 1),
        ("worker", AuditAction.EDIT_APPLIED, 1, 5, 1),
        ("bob", AuditAction.EXPERT_DEACTIVATED, None, 5, None),
        ("bob", AuditAction.EDIT_ROLLED_BACK, 1, 5, None),
    ]
    events = [
        AuditEvent(
            at=t0 + timedelta(hours=i),
            actor=actor,
            action=action,
            edit_id=edit_id,
            expert_id=expert_id,
            training_run_id=run_id,
            payload={"i": i},
        )
        for i, (actor, action, edit_id, expert_id, run_id) in enumerate(rows)
    ]
    session.add_all(events)
    session.flush()
    return events


def positions(page_items: list[AuditEvent]) -> list[int]:
    return [e.payload["i"] for e in page_items]


def test_list_audit_newest_first_by_default_and_oldest_first_on_request(session: Session) -> None:
    events = _log(session)
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert positions(list_audit(session).items) == [7, 6, 5, 4, 3, 2, 1, 0]
    assert positions(list_audit(session, order="asc").items) == [0, 1, 2, 3, 4, 5, 6, 7]
    with pytest.raises(ValueError, match=r"unknown order 'newest'; one of \['asc', 'desc'\]"):
        list_audit(session, order="newest")  # type: ignore[arg-type]


def test_list_audit_filters(session: Session) -> None:
    _log(session)
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    assert positions(list_audit(session, action=AuditAction.EDIT_SUBMITTED).items) == [1, 0]
    assert positions(list_audit(session, action="edit.applied").items) == [5]
    assert positions(list_audit(session, actor="bob").items) == [7, 6]
    assert positions(list_audit(session, edit_id=1, order="asc").items) == [0, 3, 5, 7]
    assert positions(list_audit(session, expert_id=5).items) == [7, 6, 5, 4]
    assert positions(list_audit(session, training_run_id=1).items) == [5, 4, 3, 2]
    # since inclusive, until exclusive.
    window = list_audit(session, since=t0 + timedelta(hours=2), until=t0 + timedelta(hours=4))
    assert positions(window.items) == [3, 2]
    combined = list_audit(session, edit_id=1, actor="worker", since=t0 + timedelta(hours=4))
    assert positions(combined.items) == [5]
    with pytest.raises(ValueError, match="unknown action 'edit.exploded'"):
        list_audit(session, action="edit.exploded")
    with pytest.raises(ValueError, match="since must be timezone-aware"):
        list_audit(session, since=datetime(2025, 1, 1))


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_list_audit_pagination_walks_every_row_once(session: Session, order: str) -> None:
    _log(session)
    seen: list[int] = []
    cursor = None
    while True:
        page = list_audit(session, order=order, limit=3, cursor=cursor)  # type: ignore[arg-type]
        seen += positions(page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    expected = list(range(8))
    assert seen == (expected if order == "asc" else expected[::-1])


def test_list_audit_cursor_continues_after_its_id_in_the_order_asked(session: Session) -> None:
    """A cursor marks a position (the last id seen), not a direction: the order is the query's."""
    _log(session)
    page = list_audit(session, order="desc", limit=2)
    after = page.items[-1].id
    assert page.next_cursor == f"audit.{after}"
    assert [e.id for e in list_audit(session, order="desc", cursor=page.next_cursor).items] == sorted(
        (e.id for e in list_audit(session).items if e.id < after), reverse=True
    )
    assert [e.id for e in list_audit(session, order="asc", cursor=page.next_cursor).items] == sorted(
        e.id for e in list_audit(session).items if e.id > after
    )
    with pytest.raises(InvalidCursor):
        list_audit(session, cursor="bm90IGEgY3Vyc29y")


# --- append-only ------------------------------------------------------------------------------


def _one_event(session_factory: sessionmaker[Session]) -> int:
    with session_factory() as s:
        event = append_audit(s, actor="alice", action="edit.submitted", edit_id=1, payload={"v": 1})
        s.commit()
        return event.id


def _unchanged(session_factory: sessionmaker[Session], event_id: int) -> None:
    with session_factory() as s:
        event = s.get(AuditEvent, event_id)
        assert event is not None, "the audit event was deleted"
        assert (event.actor, event.payload) == ("alice", {"v": 1}), "the audit event was changed"


def test_orm_refuses_to_update_an_audit_event(session_factory: sessionmaker[Session]) -> None:
    event_id = _one_event(session_factory)
    with session_factory() as s:
        event = s.get(AuditEvent, event_id)
        assert event is not None
        event.actor = "mallory"
        with pytest.raises(AuditLogIsAppendOnly, match=f"refusing to update audit event {event_id}"):
            s.flush()
        s.rollback()
    _unchanged(session_factory, event_id)


def test_orm_refuses_to_delete_an_audit_event(session_factory: sessionmaker[Session]) -> None:
    event_id = _one_event(session_factory)
    with session_factory() as s:
        event = s.get(AuditEvent, event_id)
        s.delete(event)
        with pytest.raises(AuditLogIsAppendOnly, match=f"refusing to delete audit event {event_id}"):
            s.commit()
    _unchanged(session_factory, event_id)


def test_orm_refuses_bulk_update_and_delete_of_audit_events(
    session_factory: sessionmaker[Session],
) -> None:
    event_id = _one_event(session_factory)
    with session_factory() as s:
        with pytest.raises(AuditLogIsAppendOnly, match="bulk update"):
            s.execute(update(AuditEvent).values(actor="mallory"))
        with pytest.raises(AuditLogIsAppendOnly, match="bulk delete"):
            s.execute(delete(AuditEvent).where(AuditEvent.id == event_id))
        # Reading is fine.
        assert s.scalars(select(AuditEvent.id)).all() == [event_id]
    _unchanged(session_factory, event_id)


def test_database_trigger_refuses_raw_update_delete_truncate(backend: str, session_factory: sessionmaker[Session], engine: Engine) -> None:
    """The trigger holds even for SQL that bypasses the ORM (a console, another tool)."""
    event_id = _one_event(session_factory)
    statements = [
        "UPDATE audit_events SET actor = 'mallory'",
        "UPDATE audit_events SET payload = '{}' WHERE id = :id",
        "DELETE FROM audit_events WHERE id = :id",
        "DELETE FROM audit_events",
    ]
    if backend == "postgresql":
        statements.append("TRUNCATE audit_events")  # SQLite has no TRUNCATE
    for statement in statements:
        with engine.connect() as conn, pytest.raises(DBAPIError, match="append-only"):
            conn.execute(text(statement), {"id": event_id})
            conn.commit()
    _unchanged(session_factory, event_id)
    # Appending still works after the refusals.
    with session_factory() as s:
        append_audit(s, actor="bob", action="edit.applied")
        s.commit()
        assert len(list_audit(s).items) == 2


def test_append_audits_writes_many_events_in_order(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as s:
        first = append_audit(s, actor="alice", action=AuditAction.EDIT_SUBMITTED, edit_id=1)
        append_audits(
            s,
            actor="alice",
            action=AuditAction.EDIT_SUBMITTED,
            events=[NewAuditEvent(edit_id=i, payload={"n": i}) for i in range(2, 52)] + [NewAuditEvent(expert_id=9, training_run_id=4)],
            on_behalf_of="bob",
        )
        append_audits(s, actor="alice", action=AuditAction.EDIT_SUBMITTED, events=[])
        s.commit()
    with session_factory() as s:
        events = list(s.scalars(select(AuditEvent).where(AuditEvent.id > first.id).order_by(AuditEvent.id)))
    assert [e.edit_id for e in events] == list(range(2, 52)) + [None]
    assert [e.payload for e in events[:2]] == [{"n": 2, "on_behalf_of": "bob"}, {"n": 3, "on_behalf_of": "bob"}]
    assert (events[-1].expert_id, events[-1].training_run_id, events[-1].payload) == (9, 4, {"on_behalf_of": "bob"})
    assert all(e.actor == "alice" and e.action is AuditAction.EDIT_SUBMITTED and e.at.utcoffset() == timedelta(0) for e in events)
