"""/healthz, /readyz, /metrics and the OpenAPI docs."""

from __future__ import annotations

import re

from sqlalchemy.orm import sessionmaker

from app import store
from app.store import make_engine
from tests.api.support import FRANCE, assert_error, generate, runtime_of, submit, worker_for


def test_healthz_is_up(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_reports_model_database_and_stack(client):
    body = client.get("/readyz").json()

    assert body["status"] == "ready" and body["database"] == "ok"
    assert body["model"] and body["device"] == "cpu"
    assert body["active_experts"] == [] and body["worker"] == "disabled"
    assert body["stack_version"] == body["database_stack_version"] == 0
    assert body["stale"] is False and body["quarantined_experts"] == []


def test_readyz_reports_the_stack_this_process_serves_not_the_databases(client):
    submit(client, FRANCE)
    worker_for(client).run_once()
    [expert] = client.get("/v1/experts").json()["items"]
    runtime = runtime_of(client)
    loaded = client.get("/readyz").json()["stack_version"]
    # Another replica deactivates the expert: SQL changes, this process has not reloaded yet.
    with runtime.session_factory() as session:
        store.set_expert_status(session, expert_id=expert["id"], status="inactive")
        session.commit()

    stale = client.get("/readyz").json()

    assert stale["stale"] is True and stale["stack_version"] == loaded
    assert stale["database_stack_version"] == loaded + 1
    assert stale["active_experts"] == [expert["name"]]  # still served here, and said so
    assert runtime.stack.sync_if_changed()
    fresh = client.get("/readyz").json()
    assert fresh["stale"] is False and fresh["stack_version"] == loaded + 1
    assert fresh["active_experts"] == []


def test_readyz_and_queries_are_503_when_the_database_is_unreachable(client):
    runtime = runtime_of(client)
    healthy = runtime.session_factory
    dead = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")
    runtime.session_factory = sessionmaker(bind=dead)
    try:
        response = client.get("/readyz")
        listing = client.get("/v1/edits")
    finally:
        runtime.session_factory = healthy
        dead.dispose()

    error = assert_error(response, 503, "not_ready", "the database is unreachable")
    # Nothing about where the database is or what its driver said.
    assert "127.0.0.1" not in error["message"] and "none" not in error["message"]
    assert "connect" not in error["message"].lower()
    assert_error(listing, 503, "database_unavailable", "retry")  # not a 500
    assert listing.headers["Retry-After"] == "5"
    assert client.get("/healthz").status_code == 200  # alive, just not ready
    assert client.get("/readyz").status_code == 200


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}{re.escape('{' + wanted + '}') if labels else ''} (\S+)$"
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"no sample {name}{labels} in:\n{text}"
    return float(match.group(1))


def test_metrics_count_requests_edits_generation_and_runs(client):
    submit(client, FRANCE)
    generate(client, "Hello")
    client.get("/v1/edits/4242")
    worker_for(client).run_once()

    text = client.get("/metrics").text

    assert _sample(text, "lemoe_http_requests_total", method="POST", route="/v1/edits", status="202") == 1
    assert _sample(text, "lemoe_http_requests_total", method="GET", route="/v1/edits/{edit_id}", status="404") == 1
    assert _sample(text, "lemoe_http_request_duration_seconds_count", method="POST", route="/v1/generate") == 1
    assert _sample(text, "lemoe_generation_duration_seconds_count", routed="false") == 1
    assert _sample(text, "lemoe_edits", status="applied") == 1
    assert _sample(text, "lemoe_edits", status="pending") == 0
    assert _sample(text, "lemoe_active_experts") == 1
    assert _sample(text, "lemoe_served_experts") == 1
    assert _sample(text, "lemoe_quarantined_experts") == 0
    assert _sample(text, "lemoe_served_stack_version") == 1
    assert _sample(text, "lemoe_training_run_duration_seconds_count", status="succeeded") == 1
    assert _sample(text, "lemoe_edits_submitted_total") == 1


def test_unknown_paths_share_one_metrics_label(client):
    for i in range(3):
        client.get(f"/no/such/path/{i}")

    text = client.get("/metrics").text

    assert _sample(text, "lemoe_http_requests_total", method="GET", route="unmatched", status="404") == 3
    assert "/no/such/path" not in text


def test_openapi_documents_the_v1_contract(client):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]

    for path, methods in {
        "/v1/edits": {"get", "post"},
        "/v1/edits/{edit_id}": {"delete", "get"},
        "/v1/edits/{edit_id}/events": {"get"},
        "/v1/generate": {"get", "post"},
        "/v1/training-runs": {"get", "post"},
        "/v1/training-runs/{run_id}": {"get"},
        "/v1/experts": {"get"},
        "/v1/experts/{expert_id}": {"get"},
        "/v1/experts/{expert_id}/deactivate": {"post"},
        "/v1/experts/{expert_id}/activate": {"post"},
        "/v1/audit": {"get"},
        "/healthz": {"get"},
        "/readyz": {"get"},
    }.items():
        assert set(paths[path]) == methods, path
    assert client.get("/docs").status_code == 200
