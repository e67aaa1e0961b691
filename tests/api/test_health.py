"""/healthz, /readyz, /metrics and the OpenAPI docs."""

from __future__ import annotations

import re

from sqlalchemy.orm import sessionmaker

from app.store import make_engine
from tests.api.support import FRANCE, assert_error, generate, runtime_of, submit, worker_for


def test_healthz_is_up(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_reports_model_database_and_stack(client):
    body = client.get("/readyz").json()

    assert body["status"] == "ready" and body["database"] == "ok"
    assert body["model"] and body["device"] == "cpu"
    assert body["active_experts"] == [] and body["worker"] == "disabled"


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

    assert_error(response, 503, "not_ready", "database")
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
        "/v1/edits/{edit_id}": {"get"},
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
