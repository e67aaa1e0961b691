"""From submission to a live expert: statuses, run progress, routed generation, the trigger."""

from __future__ import annotations

import threading

import pytest

from app.domain import EditStatus, RunTrigger
from app.engine.engine import Engine
from tests.api.support import (
    FOX,
    FRANCE,
    UNRELATED,
    assert_error,
    generate,
    running_app,
    submit,
    tiny_settings,
    worker_for,
)


def test_edit_status_follows_a_run_to_applied(db_client, monkeypatch):
    [edit_id] = submit(db_client, FRANCE)
    seen: list[str] = []
    worker = worker_for(db_client)
    engine = worker.engine
    original = engine.build_expert

    def build_and_look(name, edits, progress=None):
        seen.append(db_client.get(f"/v1/edits/{edit_id}").json()["status"])
        return original(name, edits, progress=progress)

    monkeypatch.setattr(engine, "build_expert", build_and_look)
    run_id = worker.run_once(RunTrigger.MANUAL, "carol")

    assert seen == ["training"]
    edit = db_client.get(f"/v1/edits/{edit_id}").json()
    assert edit["status"] == "applied"
    assert edit["training_run_id"] == run_id and edit["expert_id"] is not None
    assert edit["applied_at"] is not None
    events = db_client.get(f"/v1/edits/{edit_id}/events").json()["items"]
    assert [e["action"] for e in events] == ["edit.submitted", "edit.planned", "edit.applied"]
    assert {e["actor"] for e in events[1:]} == {"carol"}


def test_training_run_reports_progress_and_experts(client):
    submit(client, FRANCE, FOX)
    trigger = client.post("/v1/training-runs", headers={"X-Actor": "dave"})
    assert trigger.status_code == 202, trigger.text
    queued = trigger.json()
    assert queued["status"] == "queued" and queued["trigger"] == "manual" and queued["actor"] == "dave"
    assert queued["edits_total"] == 2 and queued["started_at"] is None and queued["duration_s"] is None

    run_id = worker_for(client).run_once(run_id=queued["id"])

    assert run_id == queued["id"]
    run = client.get(f"/v1/training-runs/{run_id}").json()
    assert run["status"] == "succeeded" and run["error"] is None
    assert (run["edits_done"], run["edits_total"]) == (2, 2)
    assert run["experts_created"] == 1 and len(run["expert_ids"]) == 1
    assert isinstance(run["current_loss"], float)
    assert run["duration_s"] is not None and run["duration_s"] >= 0
    assert run["started_at"] <= run["finished_at"]
    expert = client.get(f"/v1/experts/{run['expert_ids'][0]}").json()
    assert expert["status"] == "active" and expert["training_run_id"] == run_id
    assert expert["edit_count"] == 2 and len(expert["edit_ids"]) == 2
    assert expert["steps"] >= 1 and len(expert["sha256"]) == 64
    listed = client.get("/v1/training-runs").json()
    assert [r["id"] for r in listed["items"]] == [run_id] and listed["next_cursor"] is None
    assert client.get("/v1/training-runs", params={"status": "running"}).json()["items"] == []


def test_generation_names_the_expert_and_leaves_unrelated_prompts_alone(client):
    base_edited = generate(client, FRANCE["prompt"])
    base_unrelated = generate(client, UNRELATED)
    assert base_edited["expert"] is None and base_edited["route_score"] is None
    [edit_id] = submit(client, FRANCE)

    worker_for(client).run_once()

    edited = generate(client, FRANCE["prompt"])
    expert_id = client.get(f"/v1/edits/{edit_id}").json()["expert_id"]
    assert edited["expert"] == {"id": expert_id, "name": edited["expert"]["name"]}
    assert edited["text"].strip().startswith("Rome")
    assert edited["route_score"] > 0.9 and edited["nearest_edit_id"] == edit_id
    assert edited["model"] and edited["completion_tokens"] >= 1
    unrelated = generate(client, UNRELATED)
    assert unrelated["expert"] is None
    assert unrelated["text"] == base_unrelated["text"]
    # GET gives the same answer as POST.
    by_get = client.get("/v1/generate", params={"prompt": FRANCE["prompt"], "max_new_tokens": 6}).json()
    assert by_get["text"] == edited["text"] and by_get["expert"] == edited["expert"]


@pytest.mark.parametrize("subject_keys", [True, False])
def test_an_edit_with_a_subject_fires_only_where_the_subject_is_named(tiny_model_dir, tmp_path, subject_keys):
    # Sentence similarities to the edit's prompt on the tiny model: 0.64 and 0.93, both below this
    # gate (0.95) and above the subject keys' floor (0.4), so the subject alone decides.
    neighbour, reworded = "The capital of Germany is", "The capital of France was"
    settings = tiny_settings(tiny_model_dir, tmp_path / "data", gate_threshold=0.95, subject_keys=subject_keys)
    with running_app(settings, Engine.from_settings(settings)) as client:
        base_neighbour = generate(client, neighbour)
        [edit_id] = submit(client, FRANCE)  # subject "France"
        worker_for(client).run_once()

        assert generate(client, FRANCE["prompt"])["expert"] is not None
        near = generate(client, neighbour)
        assert near["expert"] is None and near["text"] == base_neighbour["text"]
        other = generate(client, reworded)
        if subject_keys:
            assert other["expert"] is not None and other["nearest_edit_id"] == edit_id
            assert other["subject_score"] >= 0.75 and near["subject_score"] is None
            # ... and it asks what the edit asks about France (its relation key).
            assert other["relation_score"] >= 0.3 and near["relation_score"] is None
            # ... and all of its subject matches, not only its last token (its span key).
            assert other["span_score"] >= 0.6 and near["span_score"] is None
        else:  # by wording alone the reworded prompt stays below the gate
            assert other["expert"] is None


def test_trigger_conflicts_while_a_run_is_active(client):
    submit(client, FRANCE)
    first = client.post("/v1/training-runs").json()

    second = client.post("/v1/training-runs")

    assert_error(second, 409, "run_already_active", f"training run {first['id']}", "queued")
    assert second.headers["Location"] == f"/v1/training-runs/{first['id']}"
    worker_for(client).run_once(run_id=first["id"])
    # Finished, and nothing is pending any more: a clear 409 again, of another kind.
    assert_error(client.post("/v1/training-runs"), 409, "nothing_to_train", "POST /v1/edits")


def test_run_once_without_pending_edits_does_nothing(client):
    assert worker_for(client).run_once() is None
    assert client.get("/v1/training-runs").json()["items"] == []


def test_a_failing_batch_marks_its_edits_failed_and_the_run_failed(client, settings, monkeypatch):
    ids = submit(client, FRANCE, FOX)
    worker = worker_for(client)
    worker.settings = settings.model_copy(update={"edits_per_expert": 1, "planning": False})
    original = worker.engine.build_expert
    calls = []

    def fail_first(name, edits, progress=None):
        calls.append([e.edit_id for e in edits])
        if len(calls) == 1:
            raise RuntimeError("out of memory (simulated)")
        return original(name, edits, progress=progress)

    monkeypatch.setattr(worker.engine, "build_expert", fail_first)
    run_id = worker.run_once()

    assert len(calls) == 2
    failed_id, applied_id = calls[0][0], calls[1][0]
    assert sorted([failed_id, applied_id]) == sorted(ids)
    failed = client.get(f"/v1/edits/{failed_id}").json()
    assert failed["status"] == "failed" and "out of memory (simulated)" in failed["error"]
    assert client.get(f"/v1/edits/{applied_id}").json()["status"] == "applied"
    run = client.get(f"/v1/training-runs/{run_id}").json()
    assert run["status"] == "failed" and "out of memory" in run["error"]
    assert run["experts_created"] == 1 and run["edits_done"] == 2
    actions = [e["action"] for e in client.get(f"/v1/edits/{failed_id}/events").json()["items"]]
    assert actions == ["edit.submitted", "edit.planned", "edit.failed"]
    run_events = client.get("/v1/audit", params={"training_run_id": run_id, "action": "training_run.failed"}).json()
    assert len(run_events["items"]) == 1


def test_generation_is_served_while_a_run_trains(client, monkeypatch):
    """A run blocked mid-training (status running) does not hold generation up."""
    submit(client, FRANCE)
    worker = worker_for(client)
    in_training, release = threading.Event(), threading.Event()
    original = worker.engine.build_expert

    def slow_build(name, edits, progress=None):
        in_training.set()
        assert release.wait(30), "the test never released training"
        return original(name, edits, progress=progress)

    monkeypatch.setattr(worker.engine, "build_expert", slow_build)
    result: list[int | None] = []
    thread = threading.Thread(target=lambda: result.append(worker.run_once()))
    thread.start()
    try:
        assert in_training.wait(30)
        answers = [generate(client, UNRELATED) for _ in range(3)]
        run = client.get("/v1/training-runs").json()["items"][0]
        assert run["status"] == "running"  # the answers came while it trained
        assert all(a["text"] == answers[0]["text"] for a in answers)
    finally:
        release.set()
        thread.join(60)
    assert client.get(f"/v1/training-runs/{result[0]}").json()["status"] == "succeeded"
    assert generate(client, FRANCE["prompt"])["expert"] is not None


@pytest.mark.parametrize("status", [s.value for s in EditStatus])
def test_every_status_is_a_valid_filter(client, status):
    response = client.get("/v1/edits", params={"status": status})
    assert response.status_code == 200 and response.json()["items"] == []
