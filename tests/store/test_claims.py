"""Claiming pending edits for a run (also concurrently) and start-up recovery."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from app.domain import EditStatus, RunStatus, RunTrigger
from app.store import (
    Edit,
    InvalidTransition,
    RecordNotFound,
    add_edits,
    claim_pending_edits,
    create_run,
    finish_run,
    get_edit,
    get_run,
    list_edits,
    pending_edit,
    requeue_interrupted,
    set_edit_status,
    start_run,
    utcnow,
)


def make_edits(session: Session, n: int) -> list[Edit]:
    return add_edits(session, edits=[pending_edit(f"prompt {i}", f" target {i}") for i in range(n)])


def ids(edits: list[Edit]) -> list[int]:
    return [e.id for e in edits]


def test_claim_takes_oldest_pending_first_and_respects_limit(
    session_factory: sessionmaker[Session],
) -> None:
    with session_factory() as s:
        edits = make_edits(s, 6)
        set_edit_status(s, edit_ids=[edits[0].id], status=EditStatus.APPLIED)  # not pending
        run = create_run(s, trigger=RunTrigger.SCHEDULE, actor="worker")
        s.commit()
    with session_factory() as s:
        claimed = claim_pending_edits(s, run_id=run.id, limit=3)
        s.commit()
    assert ids(claimed) == ids(edits[1:4])
    with session_factory() as s:
        assert ids(list_edits(s, training_run_id=run.id).items) == ids(edits[3:0:-1])
    assert all(e.status is EditStatus.PLANNED and e.training_run_id == run.id for e in claimed)
    with session_factory() as s:
        stored = [get_edit(s, edit_id=e.id) for e in edits]
        statuses = [e.status for e in stored if e is not None]
        assert statuses == [EditStatus.APPLIED] + [EditStatus.PLANNED] * 3 + [EditStatus.PENDING] * 2
        assert [e.training_run_id for e in stored if e is not None][4:] == [None, None]
        # The rest, then nothing.
        assert ids(claim_pending_edits(s, run_id=run.id, limit=10)) == ids(edits[4:])
        assert claim_pending_edits(s, run_id=run.id, limit=10) == []


def test_claim_updates_objects_already_in_the_session(session: Session) -> None:
    edits = make_edits(session, 2)
    run = create_run(session, trigger="manual", actor="alice")
    claimed = claim_pending_edits(session, run_id=run.id, limit=1)
    assert claimed[0] is edits[0]
    assert edits[0].status is EditStatus.PLANNED and edits[1].status is EditStatus.PENDING


def test_claim_checks_run_and_limit(session: Session) -> None:
    make_edits(session, 1)
    with pytest.raises(RecordNotFound, match="training run 404 does not exist"):
        claim_pending_edits(session, run_id=404, limit=1)
    run = create_run(session, trigger="manual", actor="alice")
    with pytest.raises(ValueError, match="limit must be a positive integer, got 0"):
        claim_pending_edits(session, run_id=run.id, limit=0)
    finish_run(session, run_id=run.id, status=RunStatus.FAILED, error="x")
    with pytest.raises(InvalidTransition, match="training run .* is failed"):
        claim_pending_edits(session, run_id=run.id, limit=1)


def test_concurrent_claims_get_disjoint_rows(backend: str, session_factory: sessionmaker[Session]) -> None:
    """A claims and holds its transaction open; B claims for the same run meanwhile (two
    workers racing). No edit is claimed twice.

    On PostgreSQL B skips A's locked rows and does not wait at all (SKIP LOCKED); SQLite has a
    single writer, so B waits for A's commit and then takes the next rows.
    """
    with session_factory() as s:
        edits = make_edits(s, 7)
        run = create_run(s, trigger="manual", actor="a")  # one active run at a time
        s.commit()

    result: dict[str, object] = {}

    def claim_b() -> None:
        try:
            with session_factory() as b:
                if backend == "postgresql":
                    # Without SKIP LOCKED B would block on A's rows; fail fast instead of hanging.
                    b.execute(text("SET LOCAL lock_timeout = '3s'"))
                result["b"] = ids(claim_pending_edits(b, run_id=run.id, limit=3))
                b.commit()
        except Exception as exc:  # reported by the main thread
            result["error"] = exc

    with session_factory() as a:
        claimed_a = ids(claim_pending_edits(a, run_id=run.id, limit=3))
        thread = threading.Thread(target=claim_b)
        thread.start()
        if backend == "postgresql":
            thread.join(timeout=10)
            assert not thread.is_alive(), "B waited for A's locks: SKIP LOCKED is not in effect"
        else:
            time.sleep(0.5)  # let B read the same pending rows and queue for the write lock
        a.commit()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert "error" not in result, result.get("error")
    claimed_b = result["b"]
    assert claimed_a == ids(edits[:3])
    assert claimed_b == ids(edits[3:6])
    with session_factory() as s:
        owners = {e.id: e.training_run_id for e in map(lambda i: get_edit(s, edit_id=i), ids(edits)) if e}
    assert [owners[i] for i in ids(edits)] == [run.id] * 6 + [None]


def test_requeue_interrupted_returns_in_flight_edits_and_interrupts_runs(
    session_factory: sessionmaker[Session],
) -> None:
    with session_factory() as s:
        edits = make_edits(s, 5)
        running = create_run(s, trigger="schedule", actor="worker")
        start_run(s, run_id=running.id)
        claim_pending_edits(s, run_id=running.id, limit=2)  # edits 0, 1 -> planned
        set_edit_status(s, edit_ids=[edits[1].id], status=EditStatus.TRAINING)
        set_edit_status(s, edit_ids=[edits[3].id], status=EditStatus.APPLIED)
        set_edit_status(s, edit_ids=[edits[4].id], status=EditStatus.FAILED, error="x")
        s.commit()

    with session_factory() as s:
        report = requeue_interrupted(s)
        s.commit()

    assert report.changed
    assert report.edit_ids == (edits[0].id, edits[1].id)
    assert [(r.previous_status, r.training_run_id) for r in report.requeued_edits] == [
        (EditStatus.PLANNED, running.id),
        (EditStatus.TRAINING, running.id),
    ]
    assert report.interrupted_run_ids == (running.id,)
    with session_factory() as s:
        after = [get_edit(s, edit_id=e.id) for e in edits]
        assert [e.status for e in after if e] == [
            EditStatus.PENDING,
            EditStatus.PENDING,
            EditStatus.PENDING,
            EditStatus.APPLIED,
            EditStatus.FAILED,
        ]
        assert all(e.training_run_id is None for e in after[:2] if e)
        run = get_run(s, run_id=running.id)
        assert run is not None and run.status is RunStatus.INTERRUPTED
        assert run.finished_at is not None and run.finished_at.tzinfo is not None
        # Nothing left to recover: a second call changes nothing.
        again = requeue_interrupted(s)
        assert not again.changed and again.edit_ids == () and again.interrupted_run_ids == ()


def test_requeue_interrupted_with_stale_before_spares_live_runs(session: Session) -> None:
    edits = make_edits(session, 3)
    run = create_run(session, trigger="schedule", actor="worker-1")
    start_run(session, run_id=run.id)
    claim_pending_edits(session, run_id=run.id, limit=1)

    alive = requeue_interrupted(session, stale_before=utcnow() - timedelta(minutes=1))

    assert not alive.changed and run.status is RunStatus.RUNNING
    assert [e.status for e in edits] == [EditStatus.PLANNED, EditStatus.PENDING, EditStatus.PENDING]

    run.heartbeat_at = utcnow() - timedelta(minutes=10)  # its process died
    session.flush()
    dead = requeue_interrupted(session, stale_before=utcnow() - timedelta(minutes=1))

    assert dead.interrupted_run_ids == (run.id,)
    assert dead.edit_ids == (edits[0].id,)
    assert run.status is RunStatus.INTERRUPTED
    assert [e.status for e in edits] == [EditStatus.PENDING] * 3
