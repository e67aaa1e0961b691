"""DELETE /v1/edits/{id} on an edit not yet applied: it is cancelled and never trained, whenever
the run that claimed it notices (before planning, before training, or while it trains). SQLite
and PostgreSQL."""

from __future__ import annotations

import json

from app.domain import RunTrigger
from tests.api.support import FOX, FRANCE, assert_error, generate, submit, worker_for


def withdraw(client, edit_id: int, actor: str = "ann"):
    return client.delete(f"/v1/edits/{edit_id}", headers={"X-Actor": actor})


def actions(client, edit_id: int) -> list[str]:
    return [e["action"] for e in client.get(f"/v1/edits/{edit_id}/events").json()["items"]]


def only_expert(client) -> dict:
    [expert] = client.get("/v1/experts").json()["items"]
    return client.get(f"/v1/experts/{expert['id']}").json()


def test_a_cancelled_pending_edit_is_never_trained(db_client):
    france, fox = submit(db_client, FRANCE, FOX)

    response = withdraw(db_client, france)

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled" and response.json()["expert_id"] is None
    [event] = db_client.get(f"/v1/edits/{france}/events").json()["items"][1:]
    assert (event["action"], event["actor"], event["payload"]) == ("edit.cancelled", "ann", {"previous_status": "pending"})
    assert worker_for(db_client).run_once() is not None
    assert only_expert(db_client)["edit_ids"] == [fox]
    edit = db_client.get(f"/v1/edits/{france}").json()
    assert edit["status"] == "cancelled" and edit["expert_id"] is None and edit["training_run_id"] is None
    assert actions(db_client, france) == ["edit.submitted", "edit.cancelled"]
    assert generate(db_client, FRANCE["prompt"])["expert"] is None
    assert db_client.get("/v1/edits", params={"status": "cancelled"}).json()["items"][0]["id"] == france
    # Terminal: a second DELETE says why not.
    assert_error(withdraw(db_client, france), 409, "edit_state_conflict", f"edit {france} is cancelled", "nothing serves it")


def test_only_cancelled_edits_leave_nothing_to_train(db_client):
    [france] = submit(db_client, FRANCE)
    assert withdraw(db_client, france).status_code == 200

    assert worker_for(db_client).run_once() is None
    assert_error(db_client.post("/v1/training-runs"), 409, "nothing_to_train")


def test_a_planned_edit_cancelled_before_training_is_left_out_of_its_batch(db_client, monkeypatch):
    france, fox = submit(db_client, FRANCE, FOX)
    worker = worker_for(db_client)
    original = worker.engine.plan
    statuses: list[str] = []

    def cancel_then_plan(edits, **kwargs):
        statuses.append(db_client.get(f"/v1/edits/{france}").json()["status"])
        assert withdraw(db_client, france).status_code == 200
        return original(edits, **kwargs)

    monkeypatch.setattr(worker.engine, "plan", cancel_then_plan)
    run_id = worker.run_once(RunTrigger.MANUAL, "carol")

    assert statuses == ["planned"]
    assert only_expert(db_client)["edit_ids"] == [fox]
    edit = db_client.get(f"/v1/edits/{france}").json()
    assert edit["status"] == "cancelled" and edit["expert_id"] is None
    assert actions(db_client, france) == ["edit.submitted", "edit.planned", "edit.cancelled"]
    cancelled = db_client.get(f"/v1/edits/{france}/events").json()["items"][-1]
    assert cancelled["training_run_id"] == run_id and cancelled["payload"] == {"previous_status": "planned"}
    run = db_client.get(f"/v1/training-runs/{run_id}").json()
    assert run["status"] == "succeeded" and (run["edits_done"], run["edits_total"]) == (2, 2)
    [finished] = db_client.get("/v1/audit", params={"action": "training_run.finished"}).json()["items"]
    assert finished["payload"]["edits_cancelled"] == 1 and finished["payload"]["edits_applied"] == 1


def test_an_edit_cancelled_while_its_batch_trains_is_trained_out_of_it(db_client, monkeypatch):
    france, fox = submit(db_client, FRANCE, FOX)
    worker = worker_for(db_client)
    original = worker.engine.build_expert
    batches: list[list[int]] = []

    def train_and_cancel(name, edits, progress=None):
        batches.append([e.edit_id for e in edits])
        built = original(name, edits, progress=progress)
        if len(batches) == 1:  # cancelled after training, before the expert is registered
            assert db_client.get(f"/v1/edits/{france}").json()["status"] == "training"
            assert withdraw(db_client, france).status_code == 200
        return built

    monkeypatch.setattr(worker.engine, "build_expert", train_and_cancel)
    run_id = worker.run_once()

    # Trained again without it, under the same name: no expert holds its anchors.
    assert batches == [sorted([france, fox]), [fox]]
    expert = only_expert(db_client)
    assert expert["edit_ids"] == [fox] and expert["edit_count"] == 1
    saved = json.loads((worker.engine.experts_dir / expert["name"] / "config.json").read_text())
    assert saved["edit_ids"] == [str(fox)]  # its files were overwritten by the second training
    edit = db_client.get(f"/v1/edits/{france}").json()
    assert edit["status"] == "cancelled" and edit["expert_id"] is None
    assert db_client.get(f"/v1/edits/{france}/events").json()["items"][-1]["payload"] == {"previous_status": "training"}
    assert generate(db_client, FRANCE["prompt"])["expert"] is None
    assert generate(db_client, FOX["prompt"])["expert"]["id"] == expert["id"]
    assert db_client.get(f"/v1/training-runs/{run_id}").json()["status"] == "succeeded"


def test_a_batch_whose_every_edit_is_cancelled_while_training_registers_nothing(client, monkeypatch):
    [france] = submit(client, FRANCE)
    worker = worker_for(client)
    original = worker.engine.build_expert

    def train_and_cancel(name, edits, progress=None):
        built = original(name, edits, progress=progress)
        assert withdraw(client, france).status_code == 200
        return built

    monkeypatch.setattr(worker.engine, "build_expert", train_and_cancel)
    run_id = worker.run_once()

    assert client.get("/v1/experts").json()["items"] == []
    assert not (worker.engine.experts_dir / f"expert-r{run_id}-b0").exists()  # its files are removed
    assert client.get(f"/v1/edits/{france}").json()["status"] == "cancelled"
    run = client.get(f"/v1/training-runs/{run_id}").json()
    assert run["status"] == "succeeded" and run["experts_created"] == 0 and run["edits_done"] == 1
    assert generate(client, FRANCE["prompt"])["expert"] is None


def test_withdrawing_an_unknown_edit_is_404(client):
    assert_error(client.delete("/v1/edits/999"), 404, "not_found", "edit 999 does not exist")


def test_an_edit_cancelled_while_its_batch_fails_stays_cancelled(client, monkeypatch):
    france, fox = submit(client, FRANCE, FOX)
    worker = worker_for(client)

    def cancel_and_fail(name, edits, progress=None):
        assert withdraw(client, france).status_code == 200
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(worker.engine, "build_expert", cancel_and_fail)
    worker.run_once()

    assert client.get(f"/v1/edits/{france}").json()["status"] == "cancelled"
    assert client.get(f"/v1/edits/{fox}").json()["status"] == "failed"
    assert actions(client, france)[-1] == "edit.cancelled"
