"""The audit log over HTTP, on SQLite and PostgreSQL: a whole life, filters, pages, append-only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.api.support import FOX, FRANCE, assert_error, submit, worker_for


def _actions(client, **params) -> list[str]:
    response = client.get("/v1/audit", params=params)
    assert response.status_code == 200, response.text
    return [event["action"] for event in response.json()["items"]]


def test_the_log_tells_the_whole_life_of_edits(db_client):
    start = datetime.now(UTC) - timedelta(seconds=1)
    [france, fox] = submit(db_client, FRANCE, FOX, actor="frank")
    run_id = db_client.post("/v1/training-runs", headers={"X-Actor": "grace"}).json()["id"]
    worker_for(db_client).run_once(run_id=run_id)
    [expert] = db_client.get("/v1/experts").json()["items"]
    db_client.post(f"/v1/experts/{expert['id']}/deactivate", headers={"X-Actor": "heidi"})

    life = _actions(db_client, order="asc")

    assert life == [
        "edit.submitted",
        "edit.submitted",
        "training_run.created",
        "training_run.started",
        "edit.planned",
        "edit.planned",
        "expert.registered",
        "expert.activated",
        "edit.applied",
        "edit.applied",
        "training_run.finished",
        "expert.deactivated",
        "edit.rolled_back",
        "edit.rolled_back",
    ]
    assert _actions(db_client) == list(reversed(life))  # newest first by default
    # Filters.
    assert _actions(db_client, actor="frank") == ["edit.submitted"] * 2
    assert _actions(db_client, actor="heidi", order="asc") == ["expert.deactivated"] + ["edit.rolled_back"] * 2
    assert _actions(db_client, edit_id=france, order="asc") == [
        "edit.submitted",
        "edit.planned",
        "edit.applied",
        "edit.rolled_back",
    ]
    assert _actions(db_client, training_run_id=run_id, action="edit.applied") == ["edit.applied"] * 2
    assert "expert.deactivated" in _actions(db_client, expert_id=expert["id"])
    assert _actions(db_client, action="edit.failed") == []
    assert len(_actions(db_client, since=start.isoformat())) == len(life)
    assert _actions(db_client, until=start.isoformat()) == []
    assert _actions(db_client, since=(datetime.now(UTC) + timedelta(seconds=5)).isoformat()) == []
    event = db_client.get("/v1/audit", params={"action": "expert.registered"}).json()["items"][0]
    assert event["actor"] == "grace"  # the worker acts for whoever triggered the run
    assert sorted(event["payload"]["edit_ids"]) == sorted([france, fox])
    assert event["training_run_id"] == run_id and event["expert_id"] == expert["id"]
    assert datetime.fromisoformat(event["at"]).tzinfo is not None


def test_audit_pages_do_not_overlap(db_client):
    submit(db_client, *[{"prompt": f"Page fact {i} is", "target": "x"} for i in range(5)])

    for order in ("desc", "asc"):
        seen, cursor = [], None
        while True:
            params = {"limit": 2, "order": order, **({"cursor": cursor} if cursor else {})}
            body = db_client.get("/v1/audit", params=params).json()
            seen += [e["id"] for e in body["items"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == 5 and len(set(seen)) == 5
        assert seen == sorted(seen, reverse=order == "desc")


def test_a_cursor_continues_after_its_id_in_the_order_asked(db_client):
    submit(db_client, FRANCE, FOX, {"prompt": "The river of Paris is", "target": "the Seine"})
    first = db_client.get("/v1/audit", params={"limit": 1, "order": "asc"}).json()
    [oldest] = [e["id"] for e in first["items"]]

    newer = db_client.get("/v1/audit", params={"cursor": first["next_cursor"], "order": "asc"}).json()
    older = db_client.get("/v1/audit", params={"cursor": first["next_cursor"], "order": "desc"}).json()

    assert first["next_cursor"] == f"audit.{oldest}"
    assert [e["id"] for e in newer["items"]] == [oldest + 1, oldest + 2]
    assert older == {"items": [], "next_cursor": None}


@pytest.mark.parametrize("after_id", [2**31, 2**63, 2**64])
@pytest.mark.parametrize("path", ["/v1/audit", "/v1/edits/1/events"])
def test_a_cursor_beyond_32_bits_is_a_422_not_a_500(db_client, path, after_id):
    """PostgreSQL overflowed at 2^31 and SQLite at 2^63 with the old cursors."""
    submit(db_client, FRANCE)

    response = db_client.get(path, params={"cursor": f"audit.{after_id}"})

    assert_error(response, 422, "invalid_cursor", f"its id {after_id} is out of range", "2147483647")


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize("path", ["/v1/audit", "/v1/edits/1/events"])
def test_no_route_changes_the_log(client, method, path):
    submit(client, FRANCE)
    before = client.get("/v1/audit").json()

    response = client.request(method, path, json={"actor": "mallory"})

    assert response.status_code == 405
    assert response.json()["error"]["type"] == "method_not_allowed"
    assert client.get("/v1/audit").json() == before


def test_a_newer_edit_of_the_same_fact_marks_the_older_one_superseded(db_client):
    [first] = submit(db_client, FRANCE)
    worker_for(db_client).run_once()
    [second, unrelated] = submit(db_client, {**FRANCE, "target": "Lyon"}, FOX)
    worker_for(db_client).run_once()

    events = db_client.get(f"/v1/edits/{first}/events").json()["items"]
    [superseded] = [e for e in events if e["action"] == "edit.superseded"]
    assert superseded["payload"]["by_edit_id"] == second
    newest_expert = db_client.get(f"/v1/edits/{second}").json()["expert_id"]
    assert superseded["expert_id"] == newest_expert
    assert db_client.get(f"/v1/edits/{first}").json()["status"] == "applied"  # history, not status
    for other in (second, unrelated):
        assert "edit.superseded" not in [e["action"] for e in db_client.get(f"/v1/edits/{other}/events").json()["items"]]
