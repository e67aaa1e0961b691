"""Retrying failed edits and idempotency keys at the store level, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.domain import EditStatus, RunStatus
from app.store import (
    InvalidTransition,
    RecordNotFound,
    add_edits,
    add_idempotency_key,
    claim_pending_edits,
    create_run,
    edits_by_ids,
    finish_run,
    get_edit,
    get_idempotency_key,
    pending_edit,
    retry_failed_edit,
    set_edit_status,
)

SHA_A = "a" * 64
SHA_B = "b" * 64


def _failed_edit(session: Session, *, error: str = "out of memory") -> tuple[int, int]:
    """One edit claimed by a run and failed there; returns (edit id, run id)."""
    [edit] = add_edits(session, edits=[pending_edit("The capital of France is", " Rome")])
    run = create_run(session, trigger="manual", actor="alice")
    claim_pending_edits(session, run_id=run.id, limit=1)
    set_edit_status(session, edit_ids=[edit.id], status=EditStatus.FAILED, error=error)
    finish_run(session, run_id=run.id, status=RunStatus.FAILED, error=error)
    session.commit()
    return edit.id, run.id


def test_retry_returns_a_failed_edit_to_pending_and_reports_what_it_had(session: Session) -> None:
    edit_id, run_id = _failed_edit(session)

    retried = retry_failed_edit(session, edit_id=edit_id)
    session.commit()

    assert (retried.previous_error, retried.previous_training_run_id) == ("out of memory", run_id)
    edit = get_edit(session, edit_id=edit_id)
    assert edit is retried.edit
    assert edit.status is EditStatus.PENDING
    assert (edit.error, edit.training_run_id, edit.expert_id, edit.applied_at) == (None, None, None, None)
    # The next run claims it like any pending edit.
    run = create_run(session, trigger="manual", actor="bob")
    assert [e.id for e in claim_pending_edits(session, run_id=run.id, limit=5)] == [edit_id]


@pytest.mark.parametrize("status", [s for s in EditStatus if s is not EditStatus.FAILED])
def test_retry_of_an_edit_that_has_not_failed_names_its_status(session: Session, status: EditStatus) -> None:
    [edit] = add_edits(session, edits=[pending_edit("p is", " t")])
    set_edit_status(session, edit_ids=[edit.id], status=status)
    session.commit()

    with pytest.raises(InvalidTransition, match=f"edit {edit.id} is {status.value}; only a failed edit"):
        retry_failed_edit(session, edit_id=edit.id)
    assert get_edit(session, edit_id=edit.id).status is status


def test_retry_of_an_unknown_edit_raises_record_not_found(session: Session) -> None:
    with pytest.raises(RecordNotFound, match="edit 404 does not exist"):
        retry_failed_edit(session, edit_id=404)


def test_concurrent_retries_of_one_edit_let_exactly_one_win(
    session_factory: sessionmaker[Session],
) -> None:
    """A retries and holds its transaction open while B retries the same edit: one wins.

    (PostgreSQL: B waits on A's row lock, then finds the edit pending; SQLite: B waits for the
    single writer, then its UPDATE no longer matches a failed edit.)
    """
    with session_factory() as s:
        edit_id, _ = _failed_edit(s)
    outcome: dict[str, object] = {}

    def retry_b() -> None:
        try:
            with session_factory() as b:
                retry_failed_edit(b, edit_id=edit_id)
                b.commit()
                outcome["b"] = "won"
        except InvalidTransition as exc:
            outcome["b"] = exc
        except Exception as exc:  # reported by the main thread
            outcome["error"] = exc

    with session_factory() as a:
        retry_failed_edit(a, edit_id=edit_id)
        thread = threading.Thread(target=retry_b)
        thread.start()
        time.sleep(0.3)  # let B get as far as it can; either order must give the same result
        a.commit()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome.get("error")
    assert isinstance(outcome["b"], InvalidTransition), outcome
    assert "is pending" in str(outcome["b"])
    with session_factory() as s:
        assert get_edit(s, edit_id=edit_id).status is EditStatus.PENDING


def test_edits_by_ids_keeps_the_given_order_and_names_missing_ids(session: Session) -> None:
    edits = add_edits(session, edits=[pending_edit(f"p{i} is", f" t{i}") for i in range(3)])
    wanted = [edits[2].id, edits[0].id]

    assert [e.id for e in edits_by_ids(session, edit_ids=wanted)] == wanted
    assert edits_by_ids(session, edit_ids=[]) == []
    with pytest.raises(RecordNotFound, match=r"\[998, 999\]"):
        edits_by_ids(session, edit_ids=[edits[0].id, 999, 998])


def test_idempotency_key_is_stored_per_actor(session: Session) -> None:
    add_idempotency_key(session, actor="alice", key="k-1", request_sha256=SHA_A, edit_ids=[3, 1])
    add_idempotency_key(session, actor="bob", key="k-1", request_sha256=SHA_B, edit_ids=[2])
    session.commit()

    alice = get_idempotency_key(session, actor="alice", key="k-1")
    assert alice is not None and (alice.request_sha256, alice.edit_ids) == (SHA_A, [3, 1])
    assert alice.created_at.tzinfo is not None
    assert get_idempotency_key(session, actor="bob", key="k-1").edit_ids == [2]
    assert get_idempotency_key(session, actor="alice", key="k-2") is None
    assert get_idempotency_key(session, actor="carol", key="k-1") is None


def test_a_second_record_of_the_same_actor_and_key_is_refused(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as s:
        add_idempotency_key(s, actor="alice", key="k", request_sha256=SHA_A, edit_ids=[1])
        s.commit()
    with session_factory() as s, pytest.raises(IntegrityError):
        add_idempotency_key(s, actor="alice", key="k", request_sha256=SHA_B, edit_ids=[2])
    with session_factory() as s:
        assert get_idempotency_key(s, actor="alice", key="k").request_sha256 == SHA_A


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"key": ""}, "idempotency key must be a string of 1-255"),
        ({"key": "k" * 256}, "idempotency key must be a string of 1-255"),
        ({"request_sha256": "abc"}, "request_sha256 must be 64 hex"),
    ],
)
def test_add_idempotency_key_checks_its_arguments(session: Session, kwargs: dict, message: str) -> None:
    values = {"actor": "alice", "key": "k", "request_sha256": SHA_A, "edit_ids": [1], **kwargs}
    with pytest.raises(ValueError, match=message):
        add_idempotency_key(session, **values)
