"""Start-up recovery and the run trigger at the service level, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app import store
from app.config import Settings
from app.domain import AuditAction, EditStatus, RunStatus, RunTrigger
from app.errors import NothingToTrain, RunAlreadyActive
from app.services import runs, training
from tests.pg import DATABASE_BACKENDS, temporary_database_url


@pytest.fixture(params=DATABASE_BACKENDS)
def sessions(request, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    with temporary_database_url(request.param, tmp_path) as url:
        database = store.make_engine(url)
        yield store.make_session_factory(database)
        database.dispose()


def _pending(sessions, n: int) -> list[int]:
    with sessions() as session:
        rows = store.add_edits(session, edits=[store.pending_edit(f"p{i} is", f"t{i}") for i in range(n)])
        session.commit()
        return [r.id for r in rows]


def test_recover_requeues_claimed_edits_with_audit(sessions):
    ids = _pending(sessions, 3)
    started = training.start_run(
        sessions, settings=Settings(_env_file=None, worker_max_batch=2), trigger=RunTrigger.SCHEDULE, actor="scheduler"
    )
    assert started is not None and [e.edit_id for e in started.edits] == ids[:2]
    assert training.start_batch(sessions, edit_ids=ids[:1]) == {ids[0]}

    report = training.recover(sessions)  # as at start-up after a crash

    assert report.interrupted_run_ids == (started.run_id,)
    assert sorted(report.edit_ids) == ids[:2]
    with sessions() as session:
        assert {store.get_edit(session, edit_id=i).status for i in ids} == {EditStatus.PENDING}
        run = store.get_run(session, run_id=started.run_id)
        assert run.status is RunStatus.INTERRUPTED and run.error
        requeued = store.list_audit(session, action=AuditAction.EDIT_REQUEUED, order="asc").items
        assert [(e.edit_id, e.payload["previous_status"]) for e in requeued] == [
            (ids[0], "training"),
            (ids[1], "planned"),
        ]
        assert all(e.actor == "system" for e in requeued)
    # Nothing left to recover: a second start-up changes nothing.
    assert not training.recover(sessions).changed


def test_trigger_refuses_a_second_run_and_an_empty_queue(sessions):
    settings = Settings(_env_file=None)
    with sessions() as session, pytest.raises(NothingToTrain):
        runs.trigger_run(session, settings=settings, actor="a")
    _pending(sessions, 1)
    with sessions() as session:
        run = runs.trigger_run(session, settings=settings, actor="a")
    with sessions() as session, pytest.raises(RunAlreadyActive) as conflict:
        runs.trigger_run(session, settings=settings, actor="b")
    assert conflict.value.run_id == run.id
    assert conflict.value.headers["Location"] == f"/v1/training-runs/{run.id}"
