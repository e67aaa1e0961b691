"""The API features the console draws on: base-vs-edited comparison, recent route scores against
the gate, audit events per day."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from app.domain import AuditAction
from app.metrics import RecentRoutes, RouteSample
from app.services import audit as audit_service
from tests.api.support import FRANCE, TINY_GATE, UNRELATED, assert_error, generate, runtime_of, submit, worker_for


def compare(client, prompt: str, max_new_tokens: int = 6) -> dict:
    response = client.post("/v1/generate/compare", json={"prompt": prompt, "max_new_tokens": max_new_tokens})
    assert response.status_code == 200, response.text
    return response.json()


def test_compare_shows_the_base_answer_beside_the_edited_one(client):
    before = compare(client, FRANCE["prompt"])
    assert before["edited"]["expert"] is None and before["changed"] is False
    assert before["base"]["text"] == before["edited"]["text"]
    assert before["thresholds"] == {
        "gate": TINY_GATE,
        "subject": 0.75,
        "relation": 0.3,
        "sentence_floor": 0.4,
        "span": 0.6,
    }  # the defaults
    [edit_id] = submit(client, FRANCE)
    worker_for(client).run_once()

    after = compare(client, FRANCE["prompt"])
    unrelated = compare(client, UNRELATED)

    assert after["base"]["text"] == before["base"]["text"]  # the base model never sees an expert
    assert after["edited"]["text"].strip().startswith("Rome") and after["changed"] is True
    assert after["edited"]["expert"]["id"] == client.get(f"/v1/edits/{edit_id}").json()["expert_id"]
    assert after["edited"]["route_score"] >= TINY_GATE and after["edited"]["nearest_edit_id"] == edit_id
    assert after["edited"]["subject_score"] >= after["thresholds"]["subject"]
    assert after["edited"]["relation_score"] >= after["thresholds"]["relation"]
    assert after["edited"]["span_score"] >= after["thresholds"]["span"]
    assert unrelated["edited"]["expert"] is None and unrelated["changed"] is False
    assert unrelated["edited"]["route_score"] < TINY_GATE


def test_compare_refuses_bad_input_with_a_4xx(client):
    assert_error(client.post("/v1/generate/compare", json={"prompt": "   "}), 422, "invalid_input", "prompt")
    assert_error(client.post("/v1/generate/compare", json={"prompt": "hi", "max_new_tokens": 0}), 422, "invalid_input")
    assert_error(client.post("/v1/generate/compare", json={"prompt": "hi", "extra": 1}), 422, "invalid_input")


def test_route_scores_keep_the_last_routes_against_the_gate(client):
    generate(client, FRANCE["prompt"])  # no expert yet: no route score, nothing kept
    assert client.get("/v1/route-scores").json()["items"] == []
    [edit_id] = submit(client, FRANCE)
    worker_for(client).run_once()

    served = generate(client, FRANCE["prompt"])
    shut = generate(client, UNRELATED)
    compare(client, FRANCE["prompt"])  # its edited side counts, its base side does not
    body = client.get("/v1/route-scores").json()

    assert body["thresholds"]["gate"] == TINY_GATE
    assert [i["score"] for i in body["items"]] == [served["route_score"], shut["route_score"], served["route_score"]]
    assert body["items"][0]["expert"] == served["expert"] and body["items"][0]["nearest_edit_id"] == edit_id
    assert body["items"][1]["expert"] is None
    assert [i["score"] for i in client.get("/v1/route-scores", params={"limit": 1}).json()["items"]] == [served["route_score"]]
    assert_error(client.get("/v1/route-scores", params={"limit": 0}), 422, "invalid_input", "limit")
    assert 'lemoe_route_score_count{routed="true"} 2.0' in client.get("/metrics").text


def test_audit_daily_counts_edits_applied_per_day(db_client):
    empty = db_client.get("/v1/audit/daily", params={"days": 3}).json()
    assert empty["action"] == "edit.applied"
    assert [i["count"] for i in empty["items"]] == [0, 0, 0]
    today = datetime.now(UTC).date()
    assert [i["day"] for i in empty["items"]] == [str(today - timedelta(days=d)) for d in (2, 1, 0)]
    submit(db_client, FRANCE, {**FRANCE, "prompt": "France's capital is"})
    worker_for(db_client).run_once()

    applied = db_client.get("/v1/audit/daily").json()["items"]
    submitted = db_client.get("/v1/audit/daily", params={"action": "edit.submitted", "days": 1}).json()["items"]

    assert len(applied) == 30 and applied[-1] == {"day": str(today), "count": 2} and sum(i["count"] for i in applied) == 2
    assert submitted == [{"day": str(today), "count": 2}]
    with runtime_of(db_client).session_factory() as session:  # yesterday's window holds none of them
        [yesterday] = audit_service.daily_counts(session, action=AuditAction.EDIT_APPLIED, days=1, today=today - timedelta(days=1))
    assert yesterday.count == 0
    assert_error(db_client.get("/v1/audit/daily", params={"days": 0}), 422, "invalid_input", "days")
    assert_error(db_client.get("/v1/audit/daily", params={"action": "edit.nothing"}), 422, "invalid_input", "action")


def test_recent_routes_keep_only_the_last_ones():
    routes = RecentRoutes(size=3)
    for i in range(5):
        routes.add(RouteSample(at=datetime.now(UTC), score=i / 10, expert_id=None, expert_name=None, nearest_edit_id=i))

    assert [s.nearest_edit_id for s in routes.last(10)] == [2, 3, 4]
    assert [s.nearest_edit_id for s in routes.last(1)] == [4]
