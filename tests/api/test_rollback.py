"""Rollback and restore: deactivating an expert gives its prompts the base answers back."""

from __future__ import annotations

import pytest

from tests.api.support import (
    FOX,
    FRANCE,
    UNRELATED,
    assert_error,
    generate,
    runtime_of,
    submit,
    worker_for,
)


def test_deactivate_rolls_back_and_activate_restores(client):
    base = {p: generate(client, p)["text"] for p in (FRANCE["prompt"], UNRELATED)}
    ids = submit(client, FRANCE, FOX)
    worker_for(client).run_once()
    [expert] = client.get("/v1/experts").json()["items"]
    edited = generate(client, FRANCE["prompt"])
    assert edited["text"] != base[FRANCE["prompt"]] and edited["expert"]["id"] == expert["id"]

    off = client.post(f"/v1/experts/{expert['id']}/deactivate", headers={"X-Actor": "erin"})

    assert off.status_code == 200, off.text
    change = off.json()
    assert change["expert"]["status"] == "inactive" and change["expert"]["deactivated_at"]
    assert sorted(change["changed_edit_ids"]) == sorted(ids) and change["edit_status"] == "rolled_back"
    assert change["active_experts"] == []
    for edit_id in ids:
        edit = client.get(f"/v1/edits/{edit_id}").json()
        assert edit["status"] == "rolled_back" and edit["expert_id"] == expert["id"]
    rolled_back = generate(client, FRANCE["prompt"])
    assert rolled_back["text"] == base[FRANCE["prompt"]] and rolled_back["expert"] is None
    assert generate(client, UNRELATED)["text"] == base[UNRELATED]
    assert client.get("/v1/experts", params={"status": "active"}).json()["items"] == []

    on = client.post(f"/v1/experts/{expert['id']}/activate", headers={"X-Actor": "erin"})

    assert on.status_code == 200, on.text
    assert on.json()["expert"]["status"] == "active" and on.json()["edit_status"] == "applied"
    assert on.json()["active_experts"] == [expert["name"]]
    assert {client.get(f"/v1/edits/{i}").json()["status"] for i in ids} == {"applied"}
    restored = generate(client, FRANCE["prompt"])
    assert restored["text"] == edited["text"] and restored["expert"]["id"] == expert["id"]
    # The whole story is in the edit's history, by the actor who did it.
    events = client.get(f"/v1/edits/{ids[0]}/events").json()["items"]
    assert [e["action"] for e in events][-2:] == ["edit.rolled_back", "edit.restored"]
    assert events[-1]["actor"] == "erin"
    expert_events = client.get("/v1/audit", params={"expert_id": expert["id"], "order": "asc"}).json()["items"]
    assert [e["action"] for e in expert_events if e["edit_id"] is None] == [
        "expert.registered",
        "expert.activated",
        "expert.deactivated",
        "expert.activated",
    ]


def test_deactivating_twice_is_a_conflict(client):
    submit(client, FRANCE)
    worker_for(client).run_once()
    [expert] = client.get("/v1/experts").json()["items"]

    assert_error(client.post(f"/v1/experts/{expert['id']}/activate"), 409, "expert_state_conflict", "already active")
    assert client.post(f"/v1/experts/{expert['id']}/deactivate").status_code == 200
    assert_error(client.post(f"/v1/experts/{expert['id']}/deactivate"), 409, "expert_state_conflict", "already inactive")


def test_rolling_back_one_expert_keeps_the_other(client):
    [france] = submit(client, FRANCE)
    worker = worker_for(client)
    worker.run_once()
    [fox] = submit(client, FOX)
    worker.run_once()
    first, second = client.get("/v1/experts").json()["items"]
    fox_answer = generate(client, FOX["prompt"])
    assert fox_answer["expert"]["id"] == second["id"]

    client.post(f"/v1/experts/{first['id']}/deactivate")

    assert client.get(f"/v1/edits/{france}").json()["status"] == "rolled_back"
    assert client.get(f"/v1/edits/{fox}").json()["status"] == "applied"
    after = generate(client, FOX["prompt"])
    scores = ("route_score", "subject_score", "relation_score", "span_score")
    # Cosines against a smaller anchor matrix may round differently in the last bit.
    assert {k: v for k, v in after.items() if k not in scores} == {k: v for k, v in fox_answer.items() if k not in scores}
    assert [after[k] for k in scores] == pytest.approx([fox_answer[k] for k in scores], abs=1e-6)
    assert generate(client, FRANCE["prompt"])["expert"] is None
    assert client.get("/readyz").json()["active_experts"] == [second["name"]]


def test_a_broken_expert_file_does_not_block_rolling_back_the_others(client):
    submit(client, FRANCE)
    worker = worker_for(client)
    worker.run_once()
    submit(client, FOX)
    worker.run_once()
    first, second = client.get("/v1/experts").json()["items"]
    engine = runtime_of(client).engine
    weights = engine.experts_dir / second["name"] / "weights.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:-8])  # damaged while it serves

    off = client.post(f"/v1/experts/{first['id']}/deactivate")

    # Not a 409: the rollback happens; the damaged expert is no longer served (never serve
    # what SQL did not record) and readiness says so.
    assert off.status_code == 200, off.text
    assert off.json()["active_experts"] == []
    ready = client.get("/readyz").json()
    assert ready["status"] == "degraded" and ready["active_experts"] == []
    [quarantined] = ready["quarantined_experts"]
    assert quarantined["id"] == second["id"] and quarantined["path"].endswith(second["name"])
    assert not quarantined["path"].startswith("/")  # never an absolute path
    assert generate(client, FOX["prompt"])["expert"] is None
    assert client.post(f"/v1/experts/{first['id']}/activate").status_code == 200
    assert client.get("/readyz").json()["active_experts"] == [first["name"]]
    [event] = client.get("/v1/audit", params={"action": "expert.load_failed"}).json()["items"]
    assert event["expert_id"] == second["id"] and "corrupt" in event["payload"]["reason"]
    assert str(engine.experts_dir.resolve()) not in str(event)

    weights.write_bytes(good)
    assert runtime_of(client).stack.sync_if_changed()

    assert client.get("/readyz").json()["active_experts"] == [first["name"], second["name"]]
    assert generate(client, FOX["prompt"])["expert"]["id"] == second["id"]


def test_a_quarantined_expert_cannot_be_deactivated_but_can_be_activated(client):
    from app.services import experts as expert_service

    [edit_id] = submit(client, FRANCE)
    worker_for(client).run_once()
    [expert] = client.get("/v1/experts").json()["items"]
    runtime = runtime_of(client)
    with runtime.session_factory() as session:
        expert_service.quarantine_expert(session, name_or_id=expert["name"], reason="bad disk", actor="ops")
    assert runtime.stack.sync_if_changed()
    assert client.get("/readyz").json()["active_experts"] == []
    assert client.get(f"/v1/edits/{edit_id}").json()["status"] == "rolled_back"

    assert_error(
        client.post(f"/v1/experts/{expert['id']}/deactivate"),
        409,
        "expert_state_conflict",
        "is quarantined, not active",
    )
    on = client.post(f"/v1/experts/{expert['id']}/activate")  # its files are fine: checked, then live

    assert on.status_code == 200, on.text
    assert on.json()["changed_edit_ids"] == [edit_id] and on.json()["active_experts"] == [expert["name"]]
    assert client.get(f"/v1/edits/{edit_id}").json()["status"] == "applied"
