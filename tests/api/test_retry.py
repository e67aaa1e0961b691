"""POST /v1/edits/{id}/retry: a failed edit goes back to pending, on SQLite and PostgreSQL."""

from __future__ import annotations

from app import store
from app.domain import EditStatus, RunStatus
from tests.api.support import FRANCE, assert_error, fresh_sessions, submit, worker_for


def _fail(settings, edit_id: int, error: str = "out of memory (simulated)") -> int:
    """Fail `edit_id` in a run of its own, as a failing batch does; returns the run id."""
    sessions = fresh_sessions(settings)
    with sessions() as session:
        run = store.create_run(session, trigger="manual", actor="scheduler")
        store.claim_pending_edits(session, run_id=run.id, limit=1)
        store.set_edit_status(session, edit_ids=[edit_id], status=EditStatus.FAILED, error=error)
        store.finish_run(session, run_id=run.id, status=RunStatus.FAILED, error=error)
        session.commit()
        run_id = run.id
    sessions.kw["bind"].dispose()
    return run_id


def test_retry_sends_a_failed_edit_back_to_pending_with_an_audit_event(db_client, db_settings):
    [edit_id] = submit(db_client, FRANCE)
    run_id = _fail(db_settings, edit_id)

    response = db_client.post(f"/v1/edits/{edit_id}/retry", headers={"X-Actor": "dave"})

    assert response.status_code == 202, response.text
    body = response.json()
    assert body["id"] == edit_id and body["status"] == "pending"
    assert body["error"] is None and body["training_run_id"] is None and body["expert_id"] is None
    assert db_client.get(f"/v1/edits/{edit_id}").json()["status"] == "pending"
    events = db_client.get(f"/v1/edits/{edit_id}/events").json()["items"]
    assert [e["action"] for e in events] == ["edit.submitted", "edit.retried"]
    retried = events[-1]
    assert retried["actor"] == "dave" and retried["training_run_id"] == run_id
    assert retried["payload"] == {"previous_error": "out of memory (simulated)"}


def test_retry_of_an_edit_that_has_not_failed_is_409_naming_its_status(db_client, db_settings):
    [edit_id] = submit(db_client, FRANCE)

    assert_error(
        db_client.post(f"/v1/edits/{edit_id}/retry"),
        409,
        "edit_state_conflict",
        f"edit {edit_id} is pending",
        "only a failed edit can be retried",
    )
    _fail(db_settings, edit_id)
    assert db_client.post(f"/v1/edits/{edit_id}/retry").status_code == 202
    # A second retry finds it pending again: refused, and no second event.
    assert_error(db_client.post(f"/v1/edits/{edit_id}/retry"), 409, "edit_state_conflict", "is pending")
    actions = [e["action"] for e in db_client.get(f"/v1/edits/{edit_id}/events").json()["items"]]
    assert actions.count("edit.retried") == 1


def test_retry_of_an_unknown_edit_is_404(db_client):
    assert_error(db_client.post("/v1/edits/999/retry"), 404, "not_found", "edit 999 does not exist")
    assert_error(db_client.post("/v1/edits/0/retry"), 422, "invalid_input", "edit_id")


def test_a_retried_edit_is_trained_by_the_next_run(client, monkeypatch):
    [edit_id] = submit(client, FRANCE)
    worker = worker_for(client)
    original = worker.engine.build_expert

    def fail(name, edits, progress=None):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(worker.engine, "build_expert", fail)
    first_run = worker.run_once()
    assert client.get(f"/v1/edits/{edit_id}").json()["status"] == "failed"
    assert worker.run_once() is None  # failed is final without a retry: nothing to train

    assert client.post(f"/v1/edits/{edit_id}/retry").status_code == 202
    monkeypatch.setattr(worker.engine, "build_expert", original)
    second_run = worker.run_once()

    assert second_run is not None and second_run != first_run
    edit = client.get(f"/v1/edits/{edit_id}").json()
    assert edit["status"] == "applied" and edit["training_run_id"] == second_run
    assert edit["error"] is None and edit["expert_id"] is not None
    actions = [e["action"] for e in client.get(f"/v1/edits/{edit_id}/events").json()["items"]]
    assert actions == [
        "edit.submitted",
        "edit.planned",
        "edit.failed",
        "edit.retried",
        "edit.planned",
        "edit.applied",
    ]
