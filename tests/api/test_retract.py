"""DELETE /v1/edits/{id} on an applied edit: its expert is retrained without it and swapped in
for the old one in one transaction; the old one serves until then. SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from app.domain import RunTrigger
from app.services import retractions
from tests.api.support import FOX, FRANCE, assert_error, generate, runtime_of, submit, worker_for

RIVER = {"prompt": "What is the name of the river?", "target": "Thames", "subject": "river"}
FRANCE_AGAIN = {"prompt": "The capital of France is", "target": "Madrid", "subject": "France"}


def withdraw(client, edit_id: int, actor: str = "bob"):
    return client.delete(f"/v1/edits/{edit_id}", headers={"X-Actor": actor})


def edit(client, edit_id: int) -> dict:
    return client.get(f"/v1/edits/{edit_id}").json()


def events(client, edit_id: int) -> list[dict]:
    return client.get(f"/v1/edits/{edit_id}/events").json()["items"]


def experts(client) -> list[dict]:
    return client.get("/v1/experts").json()["items"]


@pytest.fixture
def trained(db_client):
    """FRANCE and FOX applied in one expert; the base answer to FRANCE's prompt recorded first."""
    base = generate(db_client, FRANCE["prompt"])["text"]
    france, fox = submit(db_client, FRANCE, FOX)
    worker_for(db_client).run_once()
    [expert] = experts(db_client)
    return db_client, base, france, fox, expert


def test_retracting_an_edit_retrains_its_expert_without_it(trained):
    client, base, france, fox, old = trained
    fox_before = generate(client, FOX["prompt"])
    assert fox_before["text"].strip().startswith("the cat") and fox_before["expert"]["id"] == old["id"]

    response = withdraw(client, france)

    assert response.status_code == 202, response.text
    assert response.json()["status"] == "retracting" and response.json()["expert_id"] == old["id"]
    # Accepted, not done: the old expert still serves the edit.
    still = generate(client, FRANCE["prompt"])
    assert still["expert"]["id"] == old["id"] and still["text"].strip().startswith("Rome")
    assert_error(withdraw(client, france), 409, "edit_state_conflict", f"edit {france} is already retracting")

    worker_for(client)._tick(scheduled=False)  # the worker's tick carries retractions out

    first, new = experts(client)
    assert (first["id"], first["status"], first["replaced_by_id"]) == (old["id"], "inactive", new["id"])
    assert new["status"] == "active" and new["replaced_by_id"] is None and new["edit_count"] == 1
    assert client.get(f"/v1/experts/{new['id']}").json()["edit_ids"] == [fox]
    assert client.get(f"/v1/experts/{old['id']}").json()["edit_ids"] == [france]
    assert (edit(client, france)["status"], edit(client, france)["expert_id"]) == ("retracted", old["id"])
    assert (edit(client, fox)["status"], edit(client, fox)["expert_id"]) == ("applied", new["id"])
    assert client.get("/readyz").json()["active_experts"] == [new["name"]]
    # The retracted prompt gets the unedited model's answer; the kept edit its own.
    gone = generate(client, FRANCE["prompt"])
    assert gone["expert"] is None and gone["text"] == base
    kept = generate(client, FOX["prompt"])
    assert kept["expert"]["id"] == new["id"] and kept["text"].strip().startswith("the cat")
    # Every step in the audit log, by the actor who asked.
    history = events(client, france)
    assert [e["action"] for e in history][-2:] == ["edit.retraction_requested", "edit.retracted"]
    assert {e["actor"] for e in history[-2:]} == {"bob"}
    assert history[-1]["payload"] == {"replaced_by_expert_id": new["id"]}
    retrained = events(client, fox)[-1]
    assert retrained["action"] == "edit.retrained" and retrained["expert_id"] == new["id"]
    assert retrained["payload"] == {"from_expert_id": old["id"], "retracted_edit_ids": [france]}
    [replaced] = client.get("/v1/audit", params={"action": "expert.replaced"}).json()["items"]
    assert replaced["expert_id"] == old["id"] and replaced["actor"] == "bob"
    assert replaced["payload"]["replaced_by_expert_id"] == new["id"]
    assert (replaced["payload"]["retracted_edit_ids"], replaced["payload"]["kept_edit_ids"]) == ([france], [fox])
    new_events = client.get("/v1/audit", params={"expert_id": new["id"], "order": "asc"}).json()["items"]
    assert [e["action"] for e in new_events if e["edit_id"] is None] == ["expert.registered", "expert.activated"]
    assert new_events[0]["payload"]["replaces_expert_id"] == old["id"]
    # Terminal, and the old expert cannot come back with the retracted edit in it.
    assert_error(withdraw(client, france), 409, "edit_state_conflict", f"edit {france} is retracted (final)")
    assert_error(client.post(f"/v1/experts/{old['id']}/activate"), 409, "expert_state_conflict", f"replaced by expert {new['id']}")


def test_the_old_expert_serves_while_the_replacement_trains(trained, monkeypatch):
    client, _, france, _, old = trained
    worker = worker_for(client)
    original = worker.engine.build_expert
    during: list[tuple] = []

    def train_and_look(name, edits, progress=None):
        answer = generate(client, FRANCE["prompt"])
        during.append((edit(client, france)["status"], answer["expert"]["id"], answer["text"].strip()[:4]))
        return original(name, edits, progress=progress)

    monkeypatch.setattr(worker.engine, "build_expert", train_and_look)
    assert withdraw(client, france).status_code == 202

    assert worker.trainer.retract_pending() == 1

    assert during == [("retracting", old["id"], "Rome")]
    assert generate(client, FRANCE["prompt"])["expert"] is None


def test_retracting_the_only_edit_of_an_expert_deactivates_it(db_client, monkeypatch):
    base = generate(db_client, FRANCE["prompt"])["text"]
    [france] = submit(db_client, FRANCE)
    worker = worker_for(db_client)
    worker.run_once()
    [expert] = experts(db_client)
    assert withdraw(db_client, france, actor="eve").status_code == 202

    monkeypatch.setattr(worker.engine, "build_expert", lambda *a, **k: pytest.fail("nothing to retrain"))
    assert worker.trainer.retract_pending() == 1

    [after] = experts(db_client)
    assert after["status"] == "inactive" and after["replaced_by_id"] is None
    assert edit(db_client, france)["status"] == "retracted"
    assert generate(db_client, FRANCE["prompt"])["text"] == base
    assert db_client.get("/readyz").json()["active_experts"] == []
    deactivated = db_client.get("/v1/audit", params={"action": "expert.deactivated"}).json()["items"][0]
    assert deactivated["actor"] == "eve" and deactivated["payload"]["retracted_edit_ids"] == [france]
    assert_error(db_client.post(f"/v1/experts/{expert['id']}/activate"), 409, "expert_state_conflict", "retracted")


def test_a_replacement_keeps_its_place_in_the_stack(client):
    """Superseding survives a retraction: the replacement of an older expert stays older."""
    worker = worker_for(client)
    france, fox = submit(client, FRANCE, FOX)
    worker.run_once()
    [again] = submit(client, FRANCE_AGAIN)  # the same fact edited again: the newer wins
    worker.run_once()
    first, second = experts(client)
    assert generate(client, FRANCE["prompt"])["nearest_edit_id"] == again

    assert withdraw(client, fox).status_code == 202
    worker.trainer.retract_pending()

    old, replacement, newer = experts(client)  # in stack order
    assert (old["id"], replacement["replaced_by_id"], newer["id"]) == (first["id"], None, second["id"])
    assert old["replaced_by_id"] == replacement["id"] and replacement["id"] > newer["id"]
    assert client.get("/readyz").json()["active_experts"] == [replacement["name"], newer["name"]]
    answer = generate(client, FRANCE["prompt"])
    assert answer["expert"]["id"] == newer["id"] and answer["nearest_edit_id"] == again
    # Retracting the newer edit gives the older one its prompt back (it is still live).
    assert withdraw(client, again).status_code == 202
    worker.trainer.retract_pending()
    answer = generate(client, FRANCE["prompt"])
    assert answer["expert"]["id"] == replacement["id"] and answer["nearest_edit_id"] == france


def test_a_failed_retraining_leaves_the_edit_applied_with_the_error(client, monkeypatch):
    france, _ = submit(client, FRANCE, FOX)
    worker = worker_for(client)
    worker.run_once()
    [expert] = experts(client)
    assert withdraw(client, france).status_code == 202

    def fail(name, edits, progress=None):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(worker.engine, "build_expert", fail)
    assert worker.trainer.retract_pending() == 0

    after = edit(client, france)
    assert after["status"] == "applied" and "out of memory (simulated)" in after["error"]
    assert events(client, france)[-1]["action"] == "edit.retraction_failed"
    assert experts(client) == [expert] and generate(client, FRANCE["prompt"])["expert"]["id"] == expert["id"]
    monkeypatch.undo()
    assert withdraw(client, france).status_code == 202  # asking again retries
    assert worker.trainer.retract_pending() == 1
    assert edit(client, france)["status"] == "retracted" and edit(client, france)["error"] is None


def test_a_retraction_waits_while_its_expert_is_rolled_back(client):
    france, fox = submit(client, FRANCE, FOX)
    worker = worker_for(client)
    worker.run_once()
    [expert] = experts(client)
    assert withdraw(client, france).status_code == 202
    assert client.post(f"/v1/experts/{expert['id']}/deactivate").status_code == 200

    assert worker.trainer.retract_pending() == 0  # nothing serves it: nothing to do yet

    assert (edit(client, france)["status"], edit(client, fox)["status"]) == ("retracting", "rolled_back")
    assert_error(withdraw(client, fox), 409, "edit_state_conflict", "rolled_back", "activate the expert first")
    assert client.post(f"/v1/experts/{expert['id']}/activate").status_code == 200
    assert worker.trainer.retract_pending() == 1
    assert (edit(client, france)["status"], edit(client, fox)["status"]) == ("retracted", "applied")


def test_a_failed_edit_cannot_be_withdrawn(client, monkeypatch):
    [france] = submit(client, FRANCE)
    worker = worker_for(client)
    monkeypatch.setattr(worker.engine, "build_expert", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    worker.run_once(RunTrigger.MANUAL, "carol")
    assert edit(client, france)["status"] == "failed"

    assert_error(withdraw(client, france), 409, "edit_state_conflict", "is failed", f"/v1/edits/{france}/retry")


def test_two_edits_of_one_expert_retracted_together(client):
    base = {p: generate(client, p)["text"] for p in (FRANCE["prompt"], FOX["prompt"])}
    france, fox, river = submit(client, FRANCE, FOX, RIVER)
    worker = worker_for(client)
    worker.run_once()
    assert withdraw(client, france).status_code == 202
    assert withdraw(client, fox).status_code == 202

    assert worker.trainer.retract_pending() == 1  # one retraining for both

    old, new = experts(client)
    assert client.get(f"/v1/experts/{new['id']}").json()["edit_ids"] == [river]
    assert {edit(client, i)["status"] for i in (france, fox)} == {"retracted"}
    assert {p: generate(client, p)["text"] for p in base} == base
    assert runtime_of(client).stack.active_names() == [new["name"]]


def test_a_replacement_is_checked_before_it_goes_live(trained):
    client, _, france, fox, old = trained
    assert withdraw(client, france).status_code == 202
    worker_for(client)._tick(scheduled=False)

    _, new = experts(client)
    assert new["check"]["edits"] == 1 and new["check"]["edits_answered"] == 1 and new["check"]["edit_rate"] == 1.0
    registered = [e for e in client.get("/v1/audit", params={"expert_id": new["id"]}).json()["items"] if e["action"] == "expert.registered"]
    assert registered[0]["payload"]["check"] == new["check"]


def test_a_replacement_below_the_check_minimums_never_serves(client, monkeypatch):
    france, fox = submit(client, FRANCE, FOX)
    worker = worker_for(client)
    worker.run_once()
    [expert] = experts(client)
    assert withdraw(client, france).status_code == 202
    # One training step: the replacement has not learned the edit it keeps.
    engine = worker.engine
    monkeypatch.setattr(engine.editor, "config", dataclasses.replace(engine.editor.config, max_steps=1))
    files_before = set(engine.experts_dir.iterdir())

    assert worker.trainer.retract_pending() == 0

    after = edit(client, france)
    assert after["status"] == "applied" and after["error"].startswith("retraction failed: the check before going live failed")
    assert experts(client) == [expert]  # no replacement row; the old expert serves both edits
    assert generate(client, FOX["prompt"])["expert"]["id"] == expert["id"]
    assert set(engine.experts_dir.iterdir()) <= files_before  # no replacement files are left


def record_builds(worker, monkeypatch, then: Callable[[], None] = lambda: None) -> list[str]:
    """The names of the experts the worker builds from now on (each checked on disk when built),
    with `then` run after each build."""
    original = worker.engine.build_expert
    written: list[str] = []

    def build(name, edits, progress=None):
        built = original(name, edits, progress=progress)
        written.append(name)
        assert built.path.is_dir()
        then()
        return built

    monkeypatch.setattr(worker.engine, "build_expert", build)
    return written


def test_a_replacement_abandoned_because_its_expert_changed_leaves_no_folder(trained, monkeypatch):
    client, _, france, _, old = trained
    worker = worker_for(client)

    def deactivate_the_old_expert():
        assert client.post(f"/v1/experts/{old['id']}/deactivate").status_code == 200

    written = record_builds(worker, monkeypatch, then=deactivate_the_old_expert)
    assert withdraw(client, france).status_code == 202

    assert worker.trainer.retract_pending() == 0

    assert edit(client, france)["status"] == "retracting"  # planned again once its expert serves
    assert [e["id"] for e in experts(client)] == [old["id"]]
    assert len(written) == 1 and not (worker.engine.experts_dir / written[0]).exists()


def test_a_replacement_whose_swap_fails_leaves_no_folder(trained, monkeypatch):
    client, _, france, _, old = trained
    worker = worker_for(client)

    def database_gone(*args, **kwargs):
        raise RuntimeError("the database went away")

    written = record_builds(worker, monkeypatch)
    monkeypatch.setattr(retractions, "_mark_retracted", database_gone)  # inside the swap: nothing commits
    assert withdraw(client, france).status_code == 202

    with pytest.raises(RuntimeError, match="went away"):
        worker.trainer.retract_pending()

    assert [e["id"] for e in experts(client)] == [old["id"]]
    assert len(written) == 1 and not (worker.engine.experts_dir / written[0]).exists()
