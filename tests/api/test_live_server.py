"""Through a real uvicorn server: keep-alive after a 500, hung-up clients, stalled bodies, and
/healthz while every worker thread is stuck."""

from __future__ import annotations

import json
import threading

import anyio.to_thread
import httpx
import pytest

from app.config import Settings
from app.main import create_app
from tests.api.live import DEADLINE_S, LiveServer, live_server, read_until_closed, wait_for
from tests.api.support import tiny_settings
from tests.api.test_health import _sample

LONG_PROMPT = "Who wrote the novel?"  # the tiny model does not stop early on it


@pytest.fixture
def live_settings(tiny_model_dir, tmp_path) -> Settings:
    return tiny_settings(tiny_model_dir, tmp_path / "data", body_read_timeout_s=0.5)


def _local_port(response: httpx.Response) -> int:
    return response.extensions["network_stream"].get_extra_info("client_addr")[1]


def runtime_of_app(server: LiveServer):
    return server.app.state.runtime


def test_a_500_keeps_the_keep_alive_connection(live_settings, shared_engine):
    app = create_app(live_settings, engine=shared_engine)

    @app.get("/boom")  # this test's app only
    def boom() -> None:
        raise RuntimeError("a bug")

    with live_server(app) as server, httpx.Client(base_url=server.url, timeout=DEADLINE_S) as client:
        failed = client.get("/boom")
        first_port = _local_port(failed)
        after = client.get("/healthz")
        second_port = _local_port(after)

    assert failed.status_code == 500
    assert failed.json() == {"error": {"type": "internal_error", "message": "internal server error; the details are in the server log"}}
    assert failed.headers.get("connection") != "close"
    assert after.status_code == 200
    assert second_port == first_port  # the same connection served both


def test_healthz_answers_while_every_worker_thread_hangs_on_the_database(live_settings, shared_engine):
    with live_server(create_app(live_settings, engine=shared_engine)) as server:
        runtime = runtime_of_app(server)
        threads = 3
        server.call_in_loop(lambda: setattr(anyio.to_thread.current_default_thread_limiter(), "total_tokens", threads))
        healthy, release, entered = runtime.session_factory, threading.Event(), []

        def hung_session():  # a database that does not answer until the test lets it
            entered.append(1)
            release.wait(DEADLINE_S)
            return healthy()

        runtime.session_factory = hung_session
        results: list[int] = []

        def list_edits() -> None:
            with httpx.Client(base_url=server.url, timeout=DEADLINE_S) as c:
                results.append(c.get("/v1/edits").status_code)

        stuck = [threading.Thread(target=list_edits) for _ in range(threads)]
        try:
            for t in stuck:
                t.start()
            wait_for(lambda: len(entered) == threads, "every worker thread to hang")

            health = httpx.get(f"{server.url}/healthz", timeout=DEADLINE_S)
        finally:
            release.set()
            runtime.session_factory = healthy
            for t in stuck:
                t.join(DEADLINE_S)

    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert results == [200] * threads


def test_a_client_that_hangs_up_stops_its_generation(live_settings, shared_engine):
    forwards = threading.Event()
    calls: list[int] = []

    def slow_forward(module, args):  # ~0.05 s a token: 200 tokens would take 10 s or more
        calls.append(1)
        forwards.set()
        threading.Event().wait(0.05)

    hook = shared_engine.loaded.model.register_forward_pre_hook(slow_forward)
    try:
        with live_server(create_app(live_settings, engine=shared_engine)) as server:
            body = json.dumps({"prompt": LONG_PROMPT, "max_new_tokens": 200}).encode()
            sock = server.connect()
            sock.sendall(
                b"POST /v1/generate HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            assert forwards.wait(DEADLINE_S), "the generation did not start"
            sock.close()  # hang up mid-generation

            def stopped() -> str | None:
                text = httpx.get(f"{server.url}/metrics", timeout=DEADLINE_S).text
                return text if _sample(text, "lemoe_generations_stopped_total", reason="cancelled") == 1 else None

            text = wait_for(stopped, "the cancelled generation in /metrics")
    finally:
        hook.remove()

    assert len(calls) < 200  # one forward pass a token: it stopped early
    assert _sample(text, "lemoe_generated_tokens_total") == 0  # no generation finished
    assert _sample(text, "lemoe_generations_stopped_total", reason="deadline") == 0
    assert _sample(text, "lemoe_http_requests_total", method="POST", route="/v1/generate", status="499") == 1


@pytest.mark.parametrize(
    "framing",
    [
        pytest.param(b"Content-Length: 100\r\n\r\n" + b'{"prompt": "Hel', id="content-length"),
        pytest.param(b"Transfer-Encoding: chunked\r\n\r\n" + b'f\r\n{"prompt": "Hel\r\n', id="chunked"),
    ],
)
def test_a_stalled_body_gets_408_and_the_connection_closes(live_settings, shared_engine, framing):
    with live_server(create_app(live_settings, engine=shared_engine)) as server:
        sock = server.connect()
        sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n" + framing)
        answer = read_until_closed(sock)  # the server closes it; the test's deadline bounds the wait
        sock.close()

    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    assert b"connection: close" in head.lower()
    error = json.loads(body)["error"]
    assert error["type"] == "request_timeout"
    assert "LEMOE_BODY_READ_TIMEOUT_S" in error["message"] and "0.5 s" in error["message"]
