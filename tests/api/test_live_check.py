"""The check before an expert goes live: its figures on the expert and in its event; an expert
below the minimums never serves and its edits fail with the reason; the run's progress in steps."""

from __future__ import annotations

import dataclasses

from app.domain import RunTrigger
from app.engine.checks import LOCALITY_TOKENS, check_candidate
from app.engine.engine import Engine
from app.lemoe.reference import LOCALITY_PROMPTS
from app.lemoe.types import Edit, SamplingParams
from app.services import training
from tests.api.support import FOX, FRANCE, UNRELATED, generate, running_app, submit, tiny_settings, worker_for


def test_a_live_expert_carries_its_check_figures(db_client):
    [edit_id] = submit(db_client, FRANCE)

    run_id = worker_for(db_client).run_once()

    edit = db_client.get(f"/v1/edits/{edit_id}").json()
    assert edit["status"] == "applied"
    expert = db_client.get(f"/v1/experts/{edit['expert_id']}").json()
    check = expert["check"]
    assert (check["edits"], check["edits_answered"], check["edit_rate"], check["missed_edit_ids"]) == (1, 1, 1.0, [])
    assert (check["locality"], check["locality_kept"], check["locality_rate"]) == (len(LOCALITY_PROMPTS),) * 2 + (1.0,)
    assert (check["others"], check["others_rate"], check["changed_edit_ids"]) == (0, 1.0, [])
    assert check["seconds"] > 0
    [registered] = db_client.get("/v1/audit", params={"action": "expert.registered", "training_run_id": run_id}).json()["items"]
    assert registered["payload"]["check"] == check
    assert db_client.get("/v1/experts").json()["items"][0]["check"] == check


def test_the_next_expert_is_checked_against_the_live_edits_nearest_to_it(client):
    [france] = submit(client, FRANCE)
    worker = worker_for(client)
    worker.run_once()
    [fox] = submit(client, FOX)
    worker.run_once()

    expert_id = client.get(f"/v1/edits/{fox}").json()["expert_id"]
    check = client.get(f"/v1/experts/{expert_id}").json()["check"]
    assert (check["others"], check["others_kept"], check["changed_edit_ids"]) == (1, 1, [])
    assert client.get(f"/v1/edits/{france}").json()["status"] == "applied"


def test_an_expert_that_does_not_answer_its_edits_never_serves(db_client, monkeypatch):
    base = generate(db_client, FRANCE["prompt"])
    ids = submit(db_client, FRANCE, FOX)
    worker = worker_for(db_client)
    engine = worker.engine
    # One training step: the expert has not learned its edits yet.
    monkeypatch.setattr(engine.editor, "config", dataclasses.replace(engine.editor.config, max_steps=1))

    run_id = worker.run_once(RunTrigger.MANUAL, "erin")

    assert db_client.get("/v1/experts").json()["items"] == []
    after = generate(db_client, FRANCE["prompt"])
    assert after["expert"] is None and after["text"] == base["text"]
    for edit_id in ids:
        edit = db_client.get(f"/v1/edits/{edit_id}").json()
        assert edit["status"] == "failed" and edit["expert_id"] is None
        assert edit["error"].startswith("the check before going live failed: it answered 0 of its 2 edits")
        assert "LEMOE_CHECK_MIN_EDIT_RATE 0.75" in edit["error"]
        failed = db_client.get(f"/v1/edits/{edit_id}/events").json()["items"][-1]
        assert failed["action"] == "edit.failed" and failed["actor"] == "erin"
        assert failed["payload"]["check"]["edit_rate"] == 0.0 and failed["payload"]["expert"].startswith(f"expert-r{run_id}-")
        assert not (engine.experts_dir / failed["payload"]["expert"]).exists()  # its files are gone too
    run = db_client.get(f"/v1/training-runs/{run_id}").json()
    assert run["status"] == "failed" and "the check before going live failed" in run["error"]
    assert (run["edits_done"], run["experts_created"]) == (2, 0)
    # A retry trains it again, with the usual steps: it passes and goes live.
    monkeypatch.undo()
    assert db_client.post(f"/v1/edits/{ids[0]}/retry").status_code == 202
    worker.run_once()
    assert db_client.get(f"/v1/edits/{ids[0]}").json()["status"] == "applied"


def test_with_the_check_off_every_trained_expert_goes_live(settings, shared_engine, monkeypatch):
    with running_app(settings.model_copy(update={"check_enabled": False}), shared_engine) as client:
        [edit_id] = submit(client, FRANCE)
        monkeypatch.setattr(shared_engine.editor, "config", dataclasses.replace(shared_engine.editor.config, max_steps=1))
        worker_for(client).run_once()

        edit = client.get(f"/v1/edits/{edit_id}").json()
        assert edit["status"] == "applied"
        assert client.get(f"/v1/experts/{edit['expert_id']}").json()["check"] is None


def test_an_expert_that_takes_unrelated_prompts_is_kept_out(tiny_model_dir, tmp_path):
    # No gate and no subject keys: every prompt goes to the nearest expert, so the second expert
    # takes some of the locality sample from the first (or from the base model).
    settings = tiny_settings(tiny_model_dir, tmp_path / "data", gate_threshold=-1.0, subject_keys=False)
    with running_app(settings.model_copy(update={"check_enabled": False}), Engine.from_settings(settings)) as client:
        worker = worker_for(client)
        submit(client, FRANCE)
        worker.run_once()
        [fox] = submit(client, FOX)
        worker.settings = settings  # the check on

        worker.run_once()

        edit = client.get(f"/v1/edits/{fox}").json()
        assert edit["status"] == "failed", edit
        assert "unrelated prompts' answers" in edit["error"] and "LEMOE_CHECK_MIN_LOCALITY 1.0" in edit["error"]
        failed = client.get(f"/v1/edits/{fox}/events").json()["items"][-1]
        assert failed["payload"]["check"]["locality_rate"] < 1.0
        assert len(client.get("/v1/experts").json()["items"]) == 1


def test_the_check_measures_changed_answers_and_only_skips_prompts_whose_route_is_unchanged(shared_engine, monkeypatch):
    """Measured on the engine: an answer the candidate takes over counts as changed; the prompts it
    does not take are answered bit-identically with and without it (why the check need not
    generate them twice)."""
    editor = shared_engine.editor
    monkeypatch.setattr(editor, "_stack", ())  # the base model serves (the last app's stack is left in it)
    edit = Edit(1, FRANCE["prompt"], FRANCE["target"], subject=FRANCE["subject"])
    trained = editor.train([edit], name="check-candidate")
    # A live edit asking the same question with another answer: the candidate takes its prompt.
    other = Edit(2, FRANCE["prompt"], "Paris")

    check = check_candidate(editor, trained.entry, [edit], [other])

    assert (check.edit_rate, check.missed_edit_ids) == (1.0, [])
    assert (check.others, check.others_kept, check.changed_edit_ids) == (1, 0, [2])
    assert check.locality_rate == 1.0
    prompts = [*LOCALITY_PROMPTS, UNRELATED]
    params = SamplingParams(max_new_tokens=LOCALITY_TOKENS)
    with_it = editor.generate_routed_on(prompts, prompts, params, stack=(editor.prepared(trained.entry),))
    without = editor.generate_routed_on(prompts, prompts, params, stack=())
    assert all(g.route.expert_name is None for g in with_it)
    assert [g.text for g in with_it] == [g.text for g in without]


def test_a_run_reports_steps_and_edits_as_each_expert_finishes(client, settings, monkeypatch):
    monkeypatch.setattr(training, "PROGRESS_WRITE_INTERVAL_S", 0.0)
    submit(client, FRANCE, FOX)
    worker = worker_for(client)
    worker.settings = settings.model_copy(update={"edits_per_expert": 1, "planning": False})
    original = worker.engine.build_expert
    limit = worker.engine.max_steps
    seen: list[dict] = []

    def build_and_look(name, edits, progress=None):
        seen.append(client.get("/v1/training-runs").json()["items"][0])
        built = original(name, edits, progress=progress)
        seen.append(client.get("/v1/training-runs").json()["items"][0])  # its last step written
        return built

    monkeypatch.setattr(worker.engine, "build_expert", build_and_look)
    run_id = worker.run_once()

    first_start, first_end, second_start, second_end = seen
    assert (first_start["steps_done"], first_start["steps_planned"], first_start["edits_done"]) == (0, 2 * limit, 0)
    assert first_start["eta_s"] is None  # nothing trained yet: no pace to go by
    steps_first = first_end["steps_done"]
    assert 1 <= steps_first <= limit and first_end["edits_done"] == 0
    assert first_end["eta_s"] is not None and first_end["eta_s"] >= 0
    # The first expert is live: its edit counts, its steps replace its limit in the plan.
    assert second_start["edits_done"] == 1 and second_start["steps_done"] == steps_first
    assert second_start["steps_planned"] == steps_first + limit
    final = client.get(f"/v1/training-runs/{run_id}").json()
    assert final["status"] == "succeeded" and final["edits_done"] == 2 and final["eta_s"] is None
    experts = [client.get(f"/v1/experts/{i}").json() for i in final["expert_ids"]]
    assert final["steps_done"] == final["steps_planned"] == sum(e["steps"] for e in experts)
    assert second_end["steps_done"] == final["steps_done"]
