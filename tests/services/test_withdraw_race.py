"""A cancel racing the trainer's registration of the same edit: the database decides, and the
result is always consistent (cancelled and never applied, or applied and then retracting). On
SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app import store
from app.config import Settings
from app.domain import AuditAction, EditStatus, RunTrigger
from app.services import edits, training
from tests.pg import DATABASE_BACKENDS, temporary_database_url


@pytest.fixture(params=DATABASE_BACKENDS)
def sessions(request, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    with temporary_database_url(request.param, tmp_path) as url:
        database = store.make_engine(url)
        yield store.make_session_factory(database)
        database.dispose()


def training_edit(sessions) -> int:
    """One edit claimed by a running run and training."""
    with sessions() as session:
        [row] = store.add_edits(session, edits=[store.pending_edit("The capital of France is", "Rome")])
        session.commit()
    started = training.start_run(sessions, settings=Settings(_env_file=None), trigger=RunTrigger.MANUAL, actor="carol")
    assert started is not None
    assert training.start_batch(sessions, edit_ids=[row.id]) == {row.id}
    return row.id


def test_a_cancel_committed_first_stops_the_registration(sessions):
    edit_id = training_edit(sessions)
    with sessions() as session:
        assert edits.withdraw_edit(session, actor="ann", edit_id=edit_id).cancelled

    with sessions() as session, pytest.raises(training.BatchChanged) as changed:
        training.require_still_training(session, edit_ids=[edit_id])

    assert changed.value.edit_ids == (edit_id,)
    with sessions() as session:
        assert store.get_edit(session, edit_id=edit_id).status is EditStatus.CANCELLED


def test_a_cancel_during_the_registration_waits_and_becomes_a_retraction(sessions):
    edit_id = training_edit(sessions)
    outcome: list[edits.Withdrawn] = []
    with sessions() as registering:
        training.require_still_training(registering, edit_ids=[edit_id])  # holds the edit
        expert = store.add_expert(registering, name="expert-r1-b0", path="experts/x", sha256="0" * 64, status="active")

        def cancel() -> None:
            with sessions() as session:
                outcome.append(edits.withdraw_edit(session, actor="ann", edit_id=edit_id))

        thread = threading.Thread(target=cancel)
        thread.start()
        time.sleep(0.5)  # let it reach the lock (it waits either way: the result is the same)
        store.set_edit_status(registering, edit_ids=[edit_id], status=EditStatus.APPLIED, expert_id=expert.id)
        registering.commit()
    thread.join(60)

    [withdrawn] = outcome
    assert withdrawn.previous_status is EditStatus.APPLIED and withdrawn.edit.status is EditStatus.RETRACTING
    with sessions() as session:
        edit = store.get_edit(session, edit_id=edit_id)
        assert (edit.status, edit.expert_id) == (EditStatus.RETRACTING, expert.id)
        assert store.list_audit(session, action=AuditAction.EDIT_CANCELLED).items == []
