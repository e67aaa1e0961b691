"""The feed behind GET /v1/events, on SQLite and PostgreSQL: every committed audit event once, in
id order, filtered; an event that commits after a later id (PostgreSQL) still arrives."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app import store
from app.domain import AuditAction
from app.services.events import EventFeed, EventFilter
from tests.pg import DATABASE_BACKENDS, skip_if_postgres_disabled, temporary_database_url


@pytest.fixture(params=DATABASE_BACKENDS)
def sessions(request, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    with temporary_database_url(request.param, tmp_path) as url:
        database = store.make_engine(url)
        yield store.make_session_factory(database)
        database.dispose()


def _append(session: Session, action: AuditAction, edit_id: int | None = None) -> int:
    return store.append_audit(session, actor="test", action=action, edit_id=edit_id).id


def _commit(sessions, action: AuditAction, edit_id: int | None = None) -> int:
    with sessions() as session:
        event_id = _append(session, action, edit_id)
        session.commit()
        return event_id


def test_a_feed_hands_out_each_event_once_from_where_it_starts(sessions):
    before = _commit(sessions, AuditAction.EDIT_SUBMITTED, 1)
    feed = EventFeed(sessions, EventFilter())
    assert feed.poll() == ([], [])  # it starts after the newest event
    ids = [_commit(sessions, AuditAction.EDIT_SUBMITTED, 2), _commit(sessions, AuditAction.EDIT_PLANNED, 1)]

    audits, runs = feed.poll()

    assert [e.id for e in audits] == ids and runs == []
    assert feed.poll() == ([], [])
    mine = EventFeed(sessions, EventFilter(edit_id=1), after=0)
    assert [e.id for e in mine.poll()[0]] == [before, ids[1]]
    planned = EventFeed(sessions, EventFilter(action=AuditAction.EDIT_PLANNED), after=0)
    assert [e.id for e in planned.poll()[0]] == [ids[1]]


@pytest.mark.postgres
def test_an_event_committed_after_a_later_one_still_arrives(tmp_path):
    """PostgreSQL hands out ids at insert, so a transaction can commit after one that took a later
    id; the feed has moved past it by then and must look back for it."""
    skip_if_postgres_disabled("postgresql")
    with temporary_database_url("postgresql", tmp_path) as url:
        database = store.make_engine(url)
        sessions = store.make_session_factory(database)
        try:
            feed = EventFeed(sessions, EventFilter(), after=0)
            with sessions() as slow:
                early = _append(slow, AuditAction.EDIT_SUBMITTED, 1)  # id taken, not committed
                late = _commit(sessions, AuditAction.EDIT_SUBMITTED, 2)
                assert late > early
                assert [e.id for e in feed.poll()[0]] == [late]
                assert early in feed.holes
                slow.commit()
            assert [e.id for e in feed.poll()[0]] == [early]
            assert feed.holes == {} and feed.poll() == ([], [])
        finally:
            database.dispose()
