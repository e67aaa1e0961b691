"""Idempotency-Key on POST /v1/edits: a retried request gets the same edits, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

from tests.api.support import FOX, FRANCE, assert_error


def _post(client, body, *, key: str | None, actor: str | None = None, raw: str | None = None):
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    if actor is not None:
        headers["X-Actor"] = actor
    return client.post("/v1/edits", content=raw if raw is not None else json.dumps(body), headers=headers)


def _all_edit_ids(client) -> list[int]:
    return sorted(item["id"] for item in client.get("/v1/edits", params={"limit": 500}).json()["items"])


def _submitted_events(client) -> int:
    page = client.get("/v1/audit", params={"action": "edit.submitted", "limit": 500}).json()
    return len(page["items"])


def test_a_repeat_with_the_same_key_and_body_returns_the_same_edits(db_client):
    first = _post(db_client, [FRANCE, FOX], key="order-42", actor="alice")
    assert first.status_code == 202, first.text
    assert "Idempotent-Replayed" not in first.headers
    ids = first.json()["ids"]

    # The same request again, as a client retrying after a connection reset: the same body,
    # here even re-serialized with other key order and whitespace.
    raw = json.dumps([dict(reversed(list(FRANCE.items()))), FOX], indent=2)
    again = _post(db_client, None, key="order-42", actor="alice", raw=raw)

    assert again.status_code == 202, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["ids"] == ids
    assert [item["id"] for item in again.json()["items"]] == ids
    assert again.json()["items"][0]["target"] == FRANCE["target"]
    # Nothing new: no duplicate edits and no new audit events.
    assert _all_edit_ids(db_client) == sorted(ids)
    assert _submitted_events(db_client) == 2


def test_the_same_key_with_another_body_is_refused_naming_the_key(db_client):
    ids = _post(db_client, FRANCE, key="k-1").json()["ids"]

    other = {**FRANCE, "target": "Lyon"}
    assert_error(_post(db_client, other, key="k-1"), 422, "idempotency_key_reused", "'k-1'", "different request body")
    assert_error(_post(db_client, [FRANCE, FOX], key="k-1"), 422, "idempotency_key_reused", "'k-1'")

    assert _all_edit_ids(db_client) == ids
    # One edit object and a list of just that object are the same request.
    replay = _post(db_client, [FRANCE], key="k-1")
    assert replay.status_code == 202 and replay.json()["ids"] == ids
    assert replay.headers["Idempotent-Replayed"] == "true"


def test_keys_are_scoped_per_actor(db_client):
    alice = _post(db_client, FRANCE, key="shared", actor="alice").json()["ids"]
    bob = _post(db_client, FRANCE, key="shared", actor="bob")
    anonymous = _post(db_client, {**FRANCE, "target": "Nice"}, key="shared")

    assert bob.status_code == 202 and "Idempotent-Replayed" not in bob.headers
    assert anonymous.status_code == 202
    assert len({*alice, *bob.json()["ids"], *anonymous.json()["ids"]}) == 3
    assert _all_edit_ids(db_client) == sorted([*alice, *bob.json()["ids"], *anonymous.json()["ids"]])


def test_without_a_key_each_request_creates_new_edits(db_client):
    first = _post(db_client, FRANCE, key=None).json()["ids"]
    second = _post(db_client, FRANCE, key=None).json()["ids"]
    assert first != second and len(_all_edit_ids(db_client)) == 2


def test_a_refused_body_does_not_use_up_the_key(db_client):
    assert_error(_post(db_client, {**FRANCE, "target": " "}, key="k-2"), 422, "invalid_input", "target")

    accepted = _post(db_client, FRANCE, key="k-2")
    assert accepted.status_code == 202 and "Idempotent-Replayed" not in accepted.headers
    assert _all_edit_ids(db_client) == accepted.json()["ids"]


def test_a_replay_shows_the_edits_as_they_are_now(db_client):
    [edit_id] = _post(db_client, FRANCE, key="k-3").json()["ids"]
    assert db_client.post(f"/v1/edits/{edit_id}/retry").status_code == 409  # still pending

    replay = _post(db_client, FRANCE, key="k-3")
    assert replay.json()["items"][0]["id"] == edit_id
    assert replay.json()["items"][0]["status"] == "pending"


def test_bad_keys_are_422_naming_the_header(client):
    for key in [b"", b"k" * 256, "caf\u00e9".encode(), b"tab\there"]:
        response = client.post("/v1/edits", json=FRANCE, headers={"Idempotency-Key": key})
        assert_error(response, 422, "invalid_input", "header 'Idempotency-Key'")
    assert client.get("/v1/edits").json()["items"] == []
    # The longest allowed key, with spaces and punctuation, is fine.
    longest = "a-Z 0_9.~!" * 25 + "12345"
    assert _post(client, FRANCE, key=longest).status_code == 202
    assert _post(client, FRANCE, key=longest).headers["Idempotent-Replayed"] == "true"


def test_the_header_and_its_constraints_are_in_the_openapi_document(client):
    operation = client.get("/openapi.json").json()["paths"]["/v1/edits"]["post"]
    [header] = [p for p in operation["parameters"] if p["name"].lower() == "idempotency-key"]
    schema = header["schema"]["anyOf"][0]
    assert (schema["minLength"], schema["maxLength"]) == (1, 255)
    assert schema["pattern"] == r"^[\x20-\x7e]+$"
    assert "Idempotent-Replayed" in operation["responses"]["202"]["headers"]
    retry = client.get("/openapi.json").json()["paths"]["/v1/edits/{edit_id}/retry"]["post"]
    assert {"202", "404", "409"} <= set(retry["responses"])
