"""The edit queue over HTTP, on SQLite and PostgreSQL: submit, read back, filter, paginate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from app import store
from app.domain import AuditAction, EditStatus
from tests.api.support import FOX, FRANCE, assert_error, fresh_sessions, submit


def test_submit_one_edit_is_pending_and_committed(db_client, db_settings):
    response = db_client.post("/v1/edits", json=FRANCE, headers={"X-Actor": "alice"})

    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "pending"
    [edit_id] = body["ids"]
    [item] = body["items"]
    assert item["id"] == edit_id and item["status"] == "pending"
    assert (item["prompt"], item["target"], item["subject"]) == (FRANCE["prompt"], "Rome", "France")
    # Committed before the response: a new connection pool sees it, with its audit event.
    sessions = fresh_sessions(db_settings)
    with sessions() as session:
        row = store.get_edit(session, edit_id=edit_id)
        assert row is not None and row.status is EditStatus.PENDING and row.target == "Rome"
        [event] = store.list_audit(session, edit_id=edit_id).items
        assert event.action is AuditAction.EDIT_SUBMITTED and event.actor == "alice"
    sessions.kw["bind"].dispose()


def test_submit_a_list_keeps_order_and_reads_back(db_client):
    with_rephrases = {**FOX, "rephrases": ["Over what does the quick brown fox jump?"]}
    ids = submit(db_client, FRANCE, with_rephrases)

    assert len(ids) == 2 and ids[0] < ids[1]
    first = db_client.get(f"/v1/edits/{ids[0]}").json()
    second = db_client.get(f"/v1/edits/{ids[1]}").json()
    assert first["prompt"] == FRANCE["prompt"] and first["status"] == "pending"
    assert second["rephrases"] == with_rephrases["rephrases"]
    for key in ("created_at", "updated_at"):
        assert datetime.fromisoformat(first[key]).tzinfo is not None
    assert first["applied_at"] is None and first["expert_id"] is None and first["error"] is None


def test_unknown_edit_is_404(db_client):
    assert_error(db_client.get("/v1/edits/999"), 404, "not_found", "edit 999")
    assert_error(db_client.get("/v1/edits/999/events"), 404, "not_found", "edit 999")


def test_list_filters_by_status_subject_text_and_time(db_client):
    before = datetime.now(UTC) - timedelta(seconds=1)
    france, fox = submit(db_client, FRANCE, FOX)
    after = datetime.now(UTC) + timedelta(seconds=1)

    def ids(**params) -> list[int]:
        response = db_client.get("/v1/edits", params=params)
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["items"]]

    assert ids() == [fox, france]  # newest first
    assert ids(status="pending") == [fox, france]
    assert ids(status="applied") == []
    assert ids(subject="FRANCE") == [france]  # exact, any case
    assert ids(q="brown") == [fox]  # substring of the prompt
    assert ids(q="rom") == [france]  # ... or of the target
    assert ids(q="100%") == []  # LIKE wildcards are literal
    assert ids(created_after=before.isoformat(), created_before=after.isoformat()) == [fox, france]
    assert ids(created_after=after.isoformat()) == []
    assert ids(created_before=before.isoformat()) == []
    # Without a zone a datetime is taken as UTC.
    naive_after = after.astimezone(UTC).replace(tzinfo=None).isoformat()
    assert ids(created_after=naive_after) == []
    assert ids(expert_id=1) == []


def test_cursor_pagination_visits_every_edit_once(db_client):
    submitted = submit(db_client, *[{"prompt": f"Fact number {i} is", "target": f"v{i}"} for i in range(7)])

    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        body = db_client.get("/v1/edits", params=params).json()
        assert len(body["items"]) <= 3
        seen += [item["id"] for item in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == sorted(submitted, reverse=True)


def test_cursor_of_another_list_is_refused(db_client):
    submit(db_client, FRANCE, FOX)
    audit_cursor = db_client.get("/v1/audit", params={"limit": 1}).json()["next_cursor"]
    assert audit_cursor

    assert_error(db_client.get("/v1/edits", params={"cursor": audit_cursor}), 422, "invalid_cursor", "audit")
    assert_error(db_client.get("/v1/edits", params={"cursor": "not-a-cursor"}), 422, "invalid_cursor")


def test_edit_events_are_its_history_oldest_first(db_client):
    [edit_id] = submit(db_client, FRANCE, actor="bob")
    submit(db_client, FOX)

    body = db_client.get(f"/v1/edits/{edit_id}/events").json()

    assert [e["action"] for e in body["items"]] == ["edit.submitted"]
    assert body["items"][0]["actor"] == "bob" and body["items"][0]["edit_id"] == edit_id
    assert body["items"][0]["payload"]["target"] == "Rome"


def test_a_bulk_submission_stores_every_edit_with_its_own_event(db_client, db_settings):
    body = [
        {
            "prompt": f"The favourite colour of person {i} is",
            "target": f"colour {i}",
            "subject": f"person {i}",
            "rephrases": [f"Person {i} likes"],
        }
        for i in range(100)
    ]
    response = db_client.post("/v1/edits", json=body, headers={"X-Actor": "bulk"})
    assert response.status_code == 202
    ids = response.json()["ids"]
    assert len(ids) == 100 and ids == sorted(ids) and len(set(ids)) == 100
    assert [item["prompt"] for item in response.json()["items"]] == [b["prompt"] for b in body]
    with fresh_sessions(db_settings)() as session:
        stored = store.edits_by_ids(session, edit_ids=ids)
        events = store.list_audit(session, action=AuditAction.EDIT_SUBMITTED, order="asc", limit=200).items
    assert [(e.prompt, e.target, e.subject, e.rephrases) for e in stored] == [
        (b["prompt"], b["target"], b["subject"], b["rephrases"]) for b in body
    ]
    assert all(e.status is EditStatus.PENDING for e in stored)
    assert [e.edit_id for e in events] == ids
    assert all(e.actor == "bulk" and e.payload["rephrases"] == 1 for e in events)
    assert events[7].payload["target"] == "colour 7"


def test_the_first_problem_in_request_order_is_reported(db_client):
    too_long = "abcdefgh " * 33  # too many tokens for the tiny model
    cases = [
        ([FRANCE, {**FOX, "prompt": too_long}, {**FOX, "target": ""}], "edits[1].prompt", "tokens"),
        ([FRANCE, {**FOX, "target": ""}, {**FOX, "prompt": too_long}], "edits[1].target", "empty"),
        ([FRANCE, {**FOX, "rephrases": ["fine", too_long], "subject": "nowhere"}], "edits[1].rephrases[1]", "tokens"),
        ([FRANCE, {**FOX, "subject": "nowhere"}, {**FOX, "target": ""}], "edits[1].subject", "does not appear"),
    ]
    for body, where, what in cases:
        response = db_client.post("/v1/edits", json=body)
        assert_error(response, 422, "invalid_input", where, what)
    assert db_client.get("/v1/edits").json()["items"] == []
