"""Recording the subjects the model inferred for a run's edits, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app import store
from app.config import Settings
from app.domain import AuditAction, RunTrigger, SubjectSource
from app.engine.engine import InferredSubject
from app.services import training
from tests.pg import DATABASE_BACKENDS, temporary_database_url


@pytest.fixture(params=DATABASE_BACKENDS)
def sessions(request, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    with temporary_database_url(request.param, tmp_path) as url:
        database = store.make_engine(url)
        yield store.make_session_factory(database)
        database.dispose()


def test_inferred_subjects_are_recorded_with_their_events_in_one_go(sessions):
    with sessions() as session:
        rows = store.add_edits(
            session,
            edits=[
                store.pending_edit("Who is the CEO of Acme?", "Jo"),
                store.pending_edit("The capital of France is", "Lyon", subject="France"),
                store.pending_edit("Who wrote Hamlet?", "Bo"),
            ],
        )
        session.commit()
        bare, given, other = (r.id for r in rows)
    run = training.start_run(sessions, settings=Settings(_env_file=None), trigger=RunTrigger.MANUAL, actor="erin")
    assert run is not None

    recorded = training.record_inferred_subjects(
        sessions,
        run=run,
        subjects={
            bare: InferredSubject("Acme", "model-span"),
            given: InferredSubject("capital", "model-span"),  # the client's subject wins
        },
    )

    assert recorded == {bare: "Acme"}
    with sessions() as session:
        edits = {i: store.get_edit(session, edit_id=i) for i in (bare, given, other)}
        assert (edits[bare].subject, edits[bare].subject_source) == ("Acme", SubjectSource.INFERRED)
        assert (edits[given].subject, edits[given].subject_source) == ("France", SubjectSource.CLIENT)
        assert (edits[other].subject, edits[other].subject_source) == (None, None)
        events = store.list_audit(session, action=AuditAction.EDIT_SUBJECT_INFERRED).items
        assert [(e.edit_id, e.actor, e.training_run_id, e.payload) for e in events] == [
            (bare, "erin", run.run_id, {"subject": "Acme", "method": "model-span"}),
        ]
