"""Idempotency-Key races at the service level: concurrent first requests, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app import store
from app.config import Settings
from app.domain import AuditAction
from app.engine.engine import Engine
from app.schemas.edits import EditCreate
from app.services import edits as edit_service
from tests.api.support import shared_engine, tiny_model_dir, tiny_settings
from tests.pg import DATABASE_BACKENDS, temporary_database_url

__all__ = ["shared_engine", "tiny_model_dir"]

DRAFTS = [
    EditCreate(prompt="The capital of France is", target="Rome", subject="France"),
    EditCreate(prompt="The quick brown fox jumps over", target="the cat", subject="fox", rephrases=["What does the fox jump over?"]),
]


@pytest.fixture(params=DATABASE_BACKENDS)
def sessions(request, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    with temporary_database_url(request.param, tmp_path) as url:
        database = store.make_engine(url)
        yield store.make_session_factory(database)
        database.dispose()


@pytest.fixture
def settings(tiny_model_dir: Path, tmp_path: Path) -> Settings:
    return tiny_settings(tiny_model_dir, tmp_path / "data")


def _submit(sessions, engine: Engine, settings: Settings, key: str) -> edit_service.SubmittedEdits:
    with sessions() as session:
        return edit_service.submit_edits(session, engine=engine, settings=settings, actor="alice", edits=DRAFTS, idempotency_key=key)


def _stored(sessions) -> tuple[list[int], int]:
    """Every edit id, and how many edit.submitted events there are."""
    with sessions() as session:
        ids = sorted(e.id for e in store.list_edits(session, limit=500).items)
        events = store.list_audit(session, action=AuditAction.EDIT_SUBMITTED, limit=500).items
        return ids, len(events)


def test_the_loser_of_a_race_rolls_back_and_answers_with_the_winners_edits(sessions, shared_engine, settings, monkeypatch):
    """B looks the key up and finds nothing; A commits the same key before B does; B's insert
    then hits the unique constraint, rolls back everything it wrote, and returns A's edits."""
    original = store.get_idempotency_key
    lookups: list[str] = []
    winner: list[edit_service.SubmittedEdits] = []

    def lookup_then_lose_the_race(session, *, actor, key):
        lookups.append(key)
        if len(lookups) == 1:  # B's first lookup: A (looking up for real) commits right after it
            winner.append(_submit(sessions, shared_engine, settings, key))
            return None
        return original(session, actor=actor, key=key)

    monkeypatch.setattr(store, "get_idempotency_key", lookup_then_lose_the_race)
    loser = _submit(sessions, shared_engine, settings, "race-1")

    [a] = winner
    assert not a.replayed and loser.replayed
    assert [e.id for e in loser.edits] == [e.id for e in a.edits]
    assert len(lookups) == 3  # B, A, and B again after its rollback
    # B's edits and audit events were rolled back with its key: one set of edits in all.
    assert _stored(sessions) == (sorted(e.id for e in a.edits), len(DRAFTS))


def test_concurrent_first_requests_with_one_key_create_one_set_of_edits(sessions, shared_engine, settings):
    threads, results, errors = 4, [], []
    barrier = threading.Barrier(threads)

    def client() -> None:
        try:
            barrier.wait(timeout=30)
            results.append(_submit(sessions, shared_engine, settings, "race-2"))
        except Exception as exc:  # reported by the main thread
            errors.append(exc)

    workers = [threading.Thread(target=client) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)

    assert not any(worker.is_alive() for worker in workers)
    assert errors == []
    assert len(results) == threads
    assert sum(not r.replayed for r in results) == 1
    assert len({tuple(e.id for e in r.edits) for r in results}) == 1
    assert _stored(sessions) == (sorted(e.id for e in results[0].edits), len(DRAFTS))


def test_the_request_hash_ignores_the_body_shape_but_not_the_content():
    one = [DRAFTS[0]]
    copy = EditCreate(prompt=DRAFTS[0].prompt, target=DRAFTS[0].target, subject=DRAFTS[0].subject, rephrases=DRAFTS[0].rephrases)
    assert edit_service.request_sha256(one) == edit_service.request_sha256([copy])
    assert edit_service.request_sha256(one) != edit_service.request_sha256(DRAFTS)
    assert edit_service.request_sha256(DRAFTS) != edit_service.request_sha256(DRAFTS[::-1])
    changed = EditCreate(prompt=DRAFTS[0].prompt, target=DRAFTS[0].target)
    assert edit_service.request_sha256(one) != edit_service.request_sha256([changed])
    assert len(edit_service.request_sha256(one)) == 64
