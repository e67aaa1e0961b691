"""Bounds on slow things: generation deadline, database pool and statement timeouts, body limits
per route, and an access log that never shows a query string."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from sqlalchemy import text

from app.engine.scheduler import Scheduler
from app.lemoe.batching import RowRequest
from app.lemoe.stopping import StopSignal
from app.lemoe.types import SamplingParams
from app.main import generate_body_bytes, max_body_bytes
from app.store import make_engine
from app.store.db import DatabaseOptions, _postgres_connect_args, normalize_url
from tests.api.support import assert_error, running_app, runtime_of, tiny_settings
from tests.api.test_health import _sample
from tests.pg import temporary_database_url

LONG_PROMPT = "Who wrote the novel?"  # the tiny model does not stop early on it
JSON = {"Content-Type": "application/json"}


# --- generation deadline ----------------------------------------------------------------------


def test_a_generation_past_its_deadline_is_503_with_retry_after(tiny_model_dir, tmp_path, shared_engine):
    settings = tiny_settings(tiny_model_dir, tmp_path / "data", generation_timeout_s=1e-6)
    with running_app(settings, shared_engine) as client:
        response = client.post("/v1/generate", json={"prompt": LONG_PROMPT, "max_new_tokens": 20})
        metrics = client.get("/metrics").text

    assert_error(response, 503, "generation_timeout", "LEMOE_GENERATION_TIMEOUT_S", "1e-06 s")
    assert response.headers["Retry-After"] == "5"
    assert _sample(metrics, "lemoe_generations_stopped_total", reason="deadline") == 1
    assert _sample(metrics, "lemoe_generations_stopped_total", reason="cancelled") == 0


def test_a_generation_within_its_deadline_answers(client):
    response = client.get("/v1/generate", params={"prompt": LONG_PROMPT, "max_new_tokens": 5})

    assert response.status_code == 200, response.text
    assert response.json()["completion_tokens"] == 5


def test_past_the_batch_and_its_queue_a_generation_is_429_overloaded_at_once(tiny_model_dir, tmp_path, shared_engine):
    """One place in the batch, none to wait in: while a generation holds it, the next request is
    refused at once (on the OpenAI routes in OpenAI's error shape); then it is served again."""
    hold = threading.Event()
    own = shared_engine.scheduler
    shared_engine.scheduler = Scheduler(shared_engine.editor, max_batch=1, max_waiting=0)
    holder = threading.Thread(
        target=shared_engine.scheduler.run,
        args=(RowRequest(LONG_PROMPT, SamplingParams(max_new_tokens=100_000), (), stop=StopSignal(event=hold)),),
    )
    try:
        with running_app(tiny_settings(tiny_model_dir, tmp_path / "data"), shared_engine) as client:
            holder.start()
            deadline = time.monotonic() + 120
            while shared_engine.scheduler.running < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            refused = client.post("/v1/generate", json={"prompt": LONG_PROMPT, "max_new_tokens": 5})
            openai = client.post("/v1/completions", json={"model": "m", "prompt": LONG_PROMPT, "max_tokens": 5})
            metrics = client.get("/metrics").text
            hold.set()
            holder.join(120)
            served = client.post("/v1/generate", json={"prompt": LONG_PROMPT, "max_new_tokens": 5})
    finally:
        hold.set()
        shared_engine.scheduler.close()
        shared_engine.scheduler = own

    assert_error(refused, 429, "overloaded", "at capacity", "LEMOE_MAX_WAITING_GENERATIONS")
    assert refused.headers["Retry-After"] == "1"
    assert openai.status_code == 429 and openai.json()["error"]["code"] == "overloaded"
    assert _sample(metrics, "lemoe_generations_stopped_total", reason="overloaded") == 2
    assert _sample(metrics, "lemoe_generation_batch_rows") == 1 and _sample(metrics, "lemoe_generations_waiting") == 0
    assert served.status_code == 200 and served.json()["completion_tokens"] == 5


# --- database timeouts ------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def one_connection_client(request, tiny_model_dir, tmp_path, shared_engine):
    """An app whose pool holds one connection and waits at most half a second for it."""
    with temporary_database_url(request.param, tmp_path) as url:
        settings = tiny_settings(
            tiny_model_dir,
            tmp_path / "data",
            database_url=url,
            db_pool_size=1,
            db_max_overflow=0,
            db_pool_timeout_s=0.5,
        )
        with running_app(settings, shared_engine) as client:
            yield client


def test_a_pool_with_no_free_connection_is_503_not_500(one_connection_client):
    client = one_connection_client
    held = runtime_of(client).database.connect()  # the pool's only connection
    try:
        held.execute(text("SELECT 1"))
        response = client.get("/v1/edits")
        health = client.get("/healthz")
    finally:
        held.close()

    assert_error(response, 503, "database_unavailable", "LEMOE_DB_POOL_TIMEOUT_S", "retry")
    assert response.headers["Retry-After"] == "5"
    assert health.status_code == 200
    assert client.get("/v1/edits").status_code == 200  # the connection is back


@pytest.mark.postgres
def test_a_statement_past_the_postgres_statement_timeout_is_503(tiny_model_dir, tmp_path, shared_engine):
    with temporary_database_url("postgresql", tmp_path) as url:
        settings = tiny_settings(tiny_model_dir, tmp_path / "data", database_url=url, db_statement_timeout_s=1)
        with running_app(settings, shared_engine) as client:
            locker = make_engine(url)  # no timeouts: it holds the lock as long as the test wants
            try:
                with locker.connect() as conn:
                    conn.execute(text("LOCK TABLE edits IN ACCESS EXCLUSIVE MODE"))  # a hung database
                    response = client.get("/v1/edits")
                    conn.rollback()
            finally:
                locker.dispose()
            after = client.get("/v1/edits")

    assert_error(response, 503, "database_unavailable", "LEMOE_DB_STATEMENT_TIMEOUT_S")
    assert response.headers["Retry-After"] == "5"
    assert after.status_code == 200


def test_postgres_timeouts_keep_the_urls_own_options():
    url = normalize_url("postgresql://u@h/db?options=-csearch_path%3Dt_1")
    options = DatabaseOptions(connect_timeout_s=0.5, statement_timeout_s=2.5)

    args = _postgres_connect_args(url, options)

    assert args == {"connect_timeout": 2, "options": "-csearch_path=t_1 -c statement_timeout=2500"}
    given = normalize_url("postgresql://u@h/db?connect_timeout=9&options=-c%20statement_timeout%3D7")
    assert _postgres_connect_args(given, options) == {}  # what the URL says wins


def test_the_sqlite_busy_timeout_is_a_setting(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}", options=DatabaseOptions(sqlite_busy_timeout_s=1.5))
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA busy_timeout")).scalar_one() == 1500
    finally:
        engine.dispose()


# --- body limits per route --------------------------------------------------------------------


def _chunks(data: bytes, size: int = 16384):
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_each_route_has_its_own_body_limit(client, settings, framing):
    def post(path: str, size: int):
        data = b"[" + b" " * (size - 2) + b"]"
        content = data if framing == "content-length" else _chunks(data)
        return client.post(path, content=content, headers=JSON)

    generate_limit, edits_limit = generate_body_bytes(settings), max_body_bytes(settings)
    assert 64 * 1024 <= generate_limit < edits_limit

    too_large = post("/v1/generate", generate_limit + 1)
    assert_error(too_large, 413, "payload_too_large", str(generate_limit), "POST /v1/generate")
    assert too_large.headers["Connection"] == "close"
    assert_error(post("/v1/training-runs", 64 * 1024 + 1), 413, "payload_too_large", "65536")
    assert post("/v1/edits", generate_limit + 1).status_code == 422  # read and validated, not refused
    assert_error(post("/v1/edits", edits_limit + 1), 413, "payload_too_large", str(edits_limit))


def test_a_prompt_at_the_text_limit_fits_the_generate_body_limit(client, settings):
    prompt = "\U0001f600" * settings.max_text_chars  # outside the BMP: 12 bytes each, JSON-escaped
    escaped = "".join(f"\\u{0xD800 + ((ord(c) - 0x10000) >> 10):04x}\\u{0xDC00 + ((ord(c) - 0x10000) & 0x3FF):04x}" for c in prompt)
    body = ('{"prompt": "' + escaped + '", "max_new_tokens": 1, "do_sample": false}').encode()

    response = client.post("/v1/generate", content=body, headers=JSON)

    assert len(body) <= generate_body_bytes(settings)
    assert_error(response, 422, "invalid_input", "tokens")  # too long for the tiny model, not too large


# --- access log -------------------------------------------------------------------------------


def test_the_access_log_has_no_query_string(client, caplog):
    with caplog.at_level(logging.INFO, logger="app.access"):
        response = client.get("/v1/generate", params={"prompt": "SECRET plans for Tuesday", "max_new_tokens": 2})

    assert response.status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "app.access"]
    assert any('"GET /v1/generate" 200' in line for line in lines), lines
    assert "SECRET" not in caplog.text
