"""Every bad input gets a 4xx in the one error shape, naming the problem; never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.engine.engine import Engine
from tests.api.support import assert_error, running_app, tiny_settings

LIMITS = {"max_text_chars": 300, "max_edits_per_request": 3, "max_rephrases": 2, "max_new_tokens_limit": 20}
JSON = {"content-type": "application/json"}
OK_EDIT = {"prompt": "The capital of France is", "target": "Rome"}


@pytest.fixture(scope="module")
def strict_client(tiny_model_dir: Path, shared_engine: Engine, tmp_path_factory) -> Iterator[TestClient]:
    """One app with small limits for the whole table (the cases change nothing)."""
    settings = tiny_settings(tiny_model_dir, tmp_path_factory.mktemp("bad-input"), **LIMITS)
    with running_app(settings, shared_engine) as client:
        yield client


def edit(**fields) -> dict:
    return {**OK_EDIT, **fields}


# (id, method, url, request kwargs, status, error type, words the message must contain)
# fmt: off
CASES = [  # one case per row: the table reads better unwrapped
    # --- POST /v1/edits: values -------------------------------------------------------------
    ("empty prompt", "POST", "/v1/edits", {"json": edit(prompt="")}, 422, "invalid_input", ["prompt", "empty"]),
    ("whitespace target", "POST", "/v1/edits", {"json": edit(target=" \n\t")}, 422, "invalid_input", ["target", "whitespace"]),
    ("blank subject", "POST", "/v1/edits", {"json": edit(subject="  ")}, 422, "invalid_input", ["subject"]),
    ("subject not in prompt", "POST", "/v1/edits", {"json": edit(subject="Germany")}, 422, "invalid_input", ["subject", "'Germany'", "does not appear"]),
    ("oversized subject", "POST", "/v1/edits", {"json": edit(subject="s" * 301)}, 422, "invalid_input", ["subject", "301", "300"]),
    ("oversized prompt", "POST", "/v1/edits", {"json": edit(prompt="x" * 301)}, 422, "invalid_input", ["prompt", "301", "300"]),
    ("oversized target", "POST", "/v1/edits", {"json": edit(target="y" * 400)}, 422, "invalid_input", ["target", "300"]),
    ("too many edits", "POST", "/v1/edits", {"json": [OK_EDIT] * 4}, 422, "invalid_input", ["4 edits", "at most 3"]),
    ("empty list", "POST", "/v1/edits", {"json": []}, 422, "invalid_input", ["no edits"]),
    ("too many rephrases", "POST", "/v1/edits", {"json": edit(rephrases=["a b", "c d", "e f"])}, 422, "invalid_input", ["rephrases", "at most 2"]),
    ("blank rephrase", "POST", "/v1/edits", {"json": edit(rephrases=["fine", " "])}, 422, "invalid_input", ["rephrases[1]"]),
    ("bad edit in a list", "POST", "/v1/edits", {"json": [OK_EDIT, edit(target="")]}, 422, "invalid_input", ["edits[1].target"]),
    ("NUL in prompt", "POST", "/v1/edits", {"json": edit(prompt="a\x00b")}, 422, "invalid_input", ["NUL"]),
    ("lone surrogate", "POST", "/v1/edits", {"content": b'{"prompt": "a \\ud800 b", "target": "x"}', "headers": JSON}, 422, "invalid_input", ["surrogate"]),
    ("too long for the model", "POST", "/v1/edits", {"json": edit(prompt="abcdefgh " * 33)}, 422, "invalid_input", ["tokens", "context"]),
    # --- POST /v1/edits: types and shape ---------------------------------------------------
    ("prompt is a number", "POST", "/v1/edits", {"json": edit(prompt=5)}, 422, "invalid_input", ["'prompt'", "string"]),
    ("rephrases is a string", "POST", "/v1/edits", {"json": edit(rephrases="one")}, 422, "invalid_input", ["'rephrases'", "list"]),
    ("target missing", "POST", "/v1/edits", {"json": {"prompt": "p"}}, 422, "invalid_input", ["'target'", "required"]),
    ("unknown field", "POST", "/v1/edits", {"json": edit(rephrase=["typo"])}, 422, "invalid_input", ["'rephrase'"]),
    ("body is a number", "POST", "/v1/edits", {"json": 5}, 422, "invalid_input", ["edit object"]),
    ("body is null", "POST", "/v1/edits", {"content": b"null", "headers": JSON}, 422, "invalid_input", []),
    ("list of strings", "POST", "/v1/edits", {"json": ["a"]}, 422, "invalid_input", ["[0]"]),
    ("no body", "POST", "/v1/edits", {}, 422, "invalid_input", ["body"]),
    ("invalid JSON", "POST", "/v1/edits", {"content": b'{"prompt": ', "headers": JSON}, 400, "invalid_json", ["not valid JSON"]),
    ("invalid JSON 2", "POST", "/v1/edits", {"content": b"{bad}", "headers": JSON}, 400, "invalid_json", []),
    ("body too large", "POST", "/v1/edits", {"content": b"[" + b" " * (3 << 20) + b"]", "headers": JSON}, 413, "payload_too_large", ["bytes"]),
    ("bad X-Actor", "POST", "/v1/edits", {"json": OK_EDIT, "headers": {"X-Actor": "<script>"}}, 422, "invalid_input", ["X-Actor"]),
    ("long X-Actor", "POST", "/v1/edits", {"json": OK_EDIT, "headers": {"X-Actor": "a" * 101}}, 422, "invalid_input", ["X-Actor"]),
    # --- unknown ids and bad ids -----------------------------------------------------------
    ("unknown edit", "GET", "/v1/edits/12345", {}, 404, "not_found", ["edit 12345"]),
    ("unknown expert", "GET", "/v1/experts/77", {}, 404, "not_found", ["expert 77"]),
    ("deactivate unknown expert", "POST", "/v1/experts/77/deactivate", {}, 404, "not_found", ["expert 77"]),
    ("activate unknown expert", "POST", "/v1/experts/77/activate", {}, 404, "not_found", ["expert 77"]),
    ("unknown run", "GET", "/v1/training-runs/5", {}, 404, "not_found", ["training run 5"]),
    ("id not a number", "GET", "/v1/edits/abc", {}, 422, "invalid_input", ["edit_id", "abc"]),
    ("id zero", "GET", "/v1/edits/0", {}, 422, "invalid_input", ["edit_id"]),
    ("id beyond 32 bits", "GET", "/v1/edits/99999999999999999999", {}, 422, "invalid_input", ["edit_id"]),
    # --- list filters ----------------------------------------------------------------------
    ("bad status", "GET", "/v1/edits?status=done", {}, 422, "invalid_input", ["status", "'pending'", "'done'"]),
    ("bad run status", "GET", "/v1/training-runs?status=ok", {}, 422, "invalid_input", ["status", "'running'"]),
    ("bad expert status", "GET", "/v1/experts?status=on", {}, 422, "invalid_input", ["status", "'active'"]),
    ("bad cursor", "GET", "/v1/edits?cursor=abc", {}, 422, "invalid_cursor", ["cursor", "next_cursor"]),
    ("bad audit cursor", "GET", "/v1/audit?cursor=%%%", {}, 422, "invalid_cursor", ["cursor"]),
    ("cursor id 2^31", "GET", f"/v1/edits?cursor=edits.{2**31}", {}, 422, "invalid_cursor", ["2147483648", "out of range"]),
    ("cursor id 2^63", "GET", f"/v1/audit?cursor=audit.{2**63}", {}, 422, "invalid_cursor", ["out of range"]),
    ("cursor id 0", "GET", "/v1/training-runs?cursor=training_runs.0", {}, 422, "invalid_cursor", ["ids start at 1"]),
    ("cursor of another list", "GET", "/v1/training-runs?cursor=edits.5", {}, 422, "invalid_cursor", ["'edits' list"]),
    ("since a number", "GET", "/v1/audit?since=0.5", {}, 422, "invalid_input", ["since", "ISO 8601"]),
    ("created_after a Unix time", "GET", "/v1/edits?created_after=1700000000", {}, 422, "invalid_input", ["created_after"]),
    ("bad datetime", "GET", "/v1/edits?created_after=yesterday", {}, 422, "invalid_input", ["created_after", "yesterday"]),
    ("bad since", "GET", "/v1/audit?since=2024-13-45", {}, 422, "invalid_input", ["since"]),
    ("limit zero", "GET", "/v1/edits?limit=0", {}, 422, "invalid_input", ["limit"]),
    ("limit too big", "GET", "/v1/audit?limit=100000", {}, 422, "invalid_input", ["limit", "500"]),
    ("limit not a number", "GET", "/v1/training-runs?limit=many", {}, 422, "invalid_input", ["limit"]),
    ("bad action", "GET", "/v1/audit?action=edit.deleted", {}, 422, "invalid_input", ["action", "edit.submitted"]),
    ("bad order", "GET", "/v1/audit?order=random", {}, 422, "invalid_input", ["order"]),
    ("NUL in search", "GET", "/v1/edits?q=a%00b", {}, 422, "invalid_input", ["NUL"]),
    ("bad actor filter", "GET", "/v1/audit?actor=" + "a" * 101, {}, 422, "invalid_input", ["actor"]),
    ("negative expert filter", "GET", "/v1/edits?expert_id=-1", {}, 422, "invalid_input", ["expert_id"]),
    # --- generation --------------------------------------------------------------------------
    ("empty prompt (POST)", "POST", "/v1/generate", {"json": {"prompt": "   "}}, 422, "invalid_input", ["prompt"]),
    ("empty prompt (GET)", "GET", "/v1/generate?prompt=", {}, 422, "invalid_input", ["prompt"]),
    ("no prompt (GET)", "GET", "/v1/generate", {}, 422, "invalid_input", ["prompt", "required"]),
    ("max_new_tokens over the limit", "POST", "/v1/generate", {"json": {"prompt": "Hi", "max_new_tokens": 21}}, 422, "invalid_input", ["max_new_tokens", "20", "21"]),
    ("max_new_tokens zero", "GET", "/v1/generate?prompt=Hi&max_new_tokens=0", {}, 422, "invalid_input", ["max_new_tokens"]),
    ("max_new_tokens text", "GET", "/v1/generate?prompt=Hi&max_new_tokens=lots", {}, 422, "invalid_input", ["max_new_tokens"]),
    ("temperature NaN", "POST", "/v1/generate", {"content": b'{"prompt": "Hi", "temperature": NaN}', "headers": JSON}, 422, "invalid_input", ["temperature"]),
    ("temperature zero", "POST", "/v1/generate", {"json": {"prompt": "Hi", "do_sample": True, "temperature": 0}}, 422, "invalid_input", ["temperature"]),
    ("temperature 1e-38", "POST", "/v1/generate", {"json": {"prompt": "Hi", "do_sample": True, "temperature": 1e-38}}, 422, "invalid_input", ["temperature", "0.01"]),
    ("temperature 1e-45 (GET)", "GET", "/v1/generate?prompt=Hi&do_sample=true&temperature=1e-45", {}, 422, "invalid_input", ["temperature", "0.01"]),
    ("temperature as text", "POST", "/v1/generate", {"json": {"prompt": "Hi", "temperature": "1"}}, 422, "invalid_input", ["temperature"]),
    ("top_k false", "POST", "/v1/generate", {"json": {"prompt": "Hi", "do_sample": True, "top_k": False}}, 422, "invalid_input", ["top_k", "integer"]),
    ("max_new_tokens true", "POST", "/v1/generate", {"json": {"prompt": "Hi", "max_new_tokens": True}}, 422, "invalid_input", ["max_new_tokens", "integer"]),
    ("max_new_tokens 2.5", "POST", "/v1/generate", {"json": {"prompt": "Hi", "max_new_tokens": 2.5}}, 422, "invalid_input", ["max_new_tokens"]),
    ("do_sample 1", "POST", "/v1/generate", {"json": {"prompt": "Hi", "do_sample": 1}}, 422, "invalid_input", ["do_sample", "boolean"]),
    ("top_p zero", "POST", "/v1/generate", {"json": {"prompt": "Hi", "do_sample": True, "top_p": 0}}, 422, "invalid_input", ["top_p"]),
    ("top_k over the maximum", "POST", "/v1/generate", {"json": {"prompt": "Hi", "do_sample": True, "top_k": 100_001}}, 422, "invalid_input", ["top_k"]),
    ("top_p above one", "POST", "/v1/generate", {"json": {"prompt": "Hi", "top_p": 2}}, 422, "invalid_input", ["top_p"]),
    ("top_k negative", "GET", "/v1/generate?prompt=Hi&top_k=-1", {}, 422, "invalid_input", ["top_k"]),
    ("do_sample not a bool", "POST", "/v1/generate", {"json": {"prompt": "Hi", "do_sample": "maybe"}}, 422, "invalid_input", ["do_sample"]),
    ("prompt too long for the model", "POST", "/v1/generate", {"json": {"prompt": "abcdefgh " * 33, "max_new_tokens": 20}}, 422, "invalid_input", ["tokens"]),
    ("unknown generate field", "POST", "/v1/generate", {"json": {"prompt": "Hi", "max_tokens": 5}}, 422, "invalid_input", ["max_tokens"]),
    ("prompt not text", "POST", "/v1/generate", {"json": {"prompt": ["Hi"]}}, 422, "invalid_input", ["prompt"]),
    # --- training runs and experts -----------------------------------------------------------
    ("nothing to train", "POST", "/v1/training-runs", {}, 409, "nothing_to_train", ["no pending edits"]),
    # --- routes and methods ------------------------------------------------------------------
    ("unknown route", "GET", "/v1/nothing-here", {}, 404, "not_found", ["/v1/nothing-here"]),
    ("delete audit", "DELETE", "/v1/audit", {}, 405, "method_not_allowed", ["DELETE", "GET"]),
    ("put audit", "PUT", "/v1/audit", {"json": {}}, 405, "method_not_allowed", ["PUT"]),
    ("patch audit", "PATCH", "/v1/audit", {"json": {}}, 405, "method_not_allowed", ["PATCH"]),
    ("delete events", "DELETE", "/v1/edits/1/events", {}, 405, "method_not_allowed", []),
    ("put an edit", "PUT", "/v1/edits/1", {"json": {}}, 405, "method_not_allowed", ["PUT", "DELETE", "GET"]),
    ("put generate", "PUT", "/v1/generate", {}, 405, "method_not_allowed", ["GET, POST"]),
]
# fmt: on


@pytest.mark.parametrize(
    ("method", "url", "kwargs", "status", "type_", "needles"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_bad_input_is_a_clear_4xx(strict_client, method, url, kwargs, status, type_, needles):
    response = strict_client.request(method, url, **kwargs)

    assert_error(response, status, type_, *needles)


def test_bad_input_changed_nothing(strict_client):
    """Runs after the table (same module app): no bad request stored an edit, run or event."""
    assert strict_client.get("/v1/edits").json()["items"] == []
    assert strict_client.get("/v1/audit").json()["items"] == []
    assert strict_client.get("/v1/training-runs").json()["items"] == []


def test_a_valid_request_passes_the_same_limits(strict_client):
    """The limits are not off by one: exactly at each limit is accepted."""
    at_limits = edit(prompt="p" * 10, target="t" * 10, rephrases=["a b", "c d"])
    response = strict_client.post("/v1/edits", json=[at_limits] * 3)
    assert response.status_code == 202, response.text
    # A subject of exactly the limit passes the length check and only then fails its own rule.
    assert_error(strict_client.post("/v1/edits", json=edit(subject="s" * 300)), 422, "invalid_input", "does not appear")
    assert strict_client.get("/v1/generate", params={"prompt": "Hi", "max_new_tokens": 20}).status_code == 200
    for since in ("2026-05-01", "2026-05-01T12:00", "2026-05-01 12:00:00.5+02:00", "0001-01-01T00:00:00+05:00"):
        assert strict_client.get("/v1/audit", params={"since": since}).status_code == 200, since


def test_max_new_tokens_left_out_fits_a_lower_limit(strict_client):
    """The default (32) is above this server's limit (20): a bare request gets the limit."""
    for response in (
        strict_client.post("/v1/generate", json={"prompt": "Hi"}),
        strict_client.get("/v1/generate", params={"prompt": "Hi"}),
    ):
        assert response.status_code == 200, response.text
        assert response.json()["completion_tokens"] <= LIMITS["max_new_tokens_limit"]


def test_json_integers_may_be_written_as_whole_floats(strict_client):
    """JSON has one number type: 4.0 is the integer 4 (as JSON Schema counts it)."""
    response = strict_client.post("/v1/generate", json={"prompt": "Hi", "max_new_tokens": 4.0, "top_k": 5.0})
    assert response.status_code == 200, response.text
    assert response.json()["completion_tokens"] <= 4


def test_an_unexpected_error_is_a_generic_500(settings, shared_engine, monkeypatch, caplog):
    """The last-resort handler: logged with its traceback, answered without one."""
    from app.main import create_app
    from app.services import edits as edit_service

    def explode(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(edit_service, "get_edit", explode)
    app = create_app(settings, engine=shared_engine)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/v1/edits/1")

    error = assert_error(response, 500, "internal_error")
    assert "secret" not in error["message"]
    assert "secret internal detail" in caplog.text  # the log has it
