"""Schemathesis, in process, with every check: the OpenAPI document and the server agree.

Positive cases (valid per the document) must be accepted, negative ones refused with a 4xx,
no response may be a 5xx, and every status, header and body must be the documented ones,
on SQLite and PostgreSQL. The number of examples is bounded so that both run in about a
minute; Hypothesis deadlines are off (schemathesis' engine sets none), nothing is timed.
Against a running server, with more examples: scripts/fuzz-api (docs/API.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from schemathesis.engine import Status, events, from_schema

import tests.api.fuzz_hooks  # noqa: F401  (registers the subject-in-prompt hook)
from app.engine.engine import Engine
from app.services import keys as key_service
from app.services.checks import ACTOR_RE
from app.store.pagination import cursor_pattern
from tests.api.support import running_app, runtime_of, submit, tiny_settings, worker_for
from tests.pg import temporary_database_url

# Limits small enough that every text the document allows also fits the tiny model's context
# (at most 4 tokens a character), so a positive case is never refused for its token count.
FUZZ_LIMITS = {
    "max_text_chars": 24,
    "max_new_tokens_limit": 8,
    "max_edits_per_request": 3,
    "max_rephrases": 2,
    "max_chat_messages": 2,
    "events_max_stream_s": 0.3,  # GET /v1/events ends by itself
}
MAX_EXAMPLES = 12
SEED = 13


def schemathesis_failures(app: FastAPI, *, key: str, max_examples: int = MAX_EXAMPLES, seed: int = SEED) -> list[str]:
    """Run every phase (examples, coverage, fuzzing, stateful) with every check, as the admin
    `key` (its ignored_auth check also sends none and a wrong one); one line per failed check or
    error."""
    config = schemathesis.Config.from_dict(
        {
            "headers": {"Authorization": f"Bearer {key}"},
            "seed": seed,
            "workers": 1,
            "checks": {"enabled": True},  # all of them, as `--checks all`
            "generation": {"max-examples": max_examples},
            # Show every value in failures (max_new_tokens looks like a secret to it).
            "output": {"sanitization": {"enabled": False}},
            "cache": {"enabled": False},  # nothing written into the work tree, no run depends on another
        }
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    found: list[str] = []
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished | events.FuzzScenarioFinished):
            found += _failed_checks(event.recorder)
        elif isinstance(event, events.NonFatalError):
            found.append(f"error in {event.label}: {event.info.format()}")
        elif isinstance(event, events.FatalError):
            found.append(f"fatal: {event.exception!r}")
    return sorted(set(found))


def _failed_checks(recorder: Any) -> list[str]:
    found = []
    for case_id, checks in recorder.checks.items():
        for check in checks:
            if check.status == Status.FAILURE and check.failure_info is not None:
                failure = check.failure_info.failure
                interaction = recorder.interactions.get(case_id)
                answer = interaction.response if interaction is not None else None
                body = "" if answer is None else f" -> {answer.status_code} {answer.content!r:.300}"
                found.append(
                    f"{recorder.label}: {check.name}: {failure.title}: {failure.message}\n    {check.failure_info.code_sample}{body}"
                )
    return found


@pytest.fixture
def fuzz_app(backend: str, tiny_model_dir: Path, tmp_path: Path, shared_engine: Engine) -> Iterator[tuple[FastAPI, str]]:
    """An app with one trained expert and its edit, so that the expert routes (and their
    links in the stateful phase) reach more than 404s, and an admin key (so keys are required)."""
    with temporary_database_url(backend, tmp_path) as url:
        settings = tiny_settings(tiny_model_dir, tmp_path / "data", database_url=url, **FUZZ_LIMITS)
        with running_app(settings, shared_engine) as client:
            submit(client, {"prompt": "The capital of France", "target": "Rome", "subject": "France"})
            assert worker_for(client).run_once() is not None
            assert [e["status"] for e in client.get("/v1/experts").json()["items"]] == ["active"]
            with runtime_of(client).session_factory() as session:
                secret = key_service.create_key(session, name="fuzz-admin-3f9c", scopes=["admin"], actor="test").secret
            assert client.get("/v1/experts").status_code == 401  # keys are required from now on
            yield client.app, secret  # type: ignore[misc]


def test_schemathesis_finds_nothing(fuzz_app: tuple[FastAPI, str]):
    app, key = fuzz_app
    failures = schemathesis_failures(app, key=key)

    assert failures == [], "\n".join(failures)


def test_the_document_states_this_servers_limits(fuzz_app: tuple[FastAPI, str]):
    """The limits are the running server's settings, not the defaults."""
    document = fuzz_app[0].openapi()
    schemas = document["components"]["schemas"]
    edit = schemas["EditCreate"]["properties"]
    assert edit["prompt"]["maxLength"] == FUZZ_LIMITS["max_text_chars"]
    assert edit["rephrases"]["maxItems"] == FUZZ_LIMITS["max_rephrases"]
    max_new_tokens = schemas["GenerateRequest"]["properties"]["max_new_tokens"]
    assert (max_new_tokens["maximum"], max_new_tokens["default"]) == (8, 8)  # 32 is above the limit
    body = document["paths"]["/v1/edits"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    [many] = [s for s in body["oneOf"] if s.get("type") == "array"]
    assert (many["minItems"], many["maxItems"]) == (1, FUZZ_LIMITS["max_edits_per_request"])
    assert "x-lemoe-settings" not in str(document)


def test_every_list_states_its_cursor_and_every_route_its_errors(fuzz_app: tuple[FastAPI, str]):
    paths = fuzz_app[0].openapi()["paths"]
    lists = {"/v1/edits": "edits", "/v1/edits/{edit_id}/events": "audit", "/v1/audit": "audit", "/v1/training-runs": "training_runs"}
    for path, kind in lists.items():
        [cursor] = [p for p in paths[path]["get"]["parameters"] if p["name"] == "cursor"]
        assert cursor["schema"]["pattern"] == cursor_pattern(kind), path
    [actor] = [p for p in paths["/v1/edits"]["post"]["parameters"] if p["name"] == "x-actor"]
    assert (actor["schema"]["pattern"], actor["schema"]["maxLength"]) == (f"^{ACTOR_RE.pattern}$", 100)
    for path, operations in paths.items():
        if path.startswith("/v1/"):
            for operation in operations.values():
                assert {"400", "401", "403", "413", "422", "500", "503"} <= set(operation["responses"]), path
                assert "Retry-After" in operation["responses"]["503"]["headers"], path
