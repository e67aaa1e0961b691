"""HTTP is up before the model: /healthz 200 and /readyz 503 naming the stage while it loads, the
"serving on ..." line once the port is open, and a failed start-up that stops `lemoe serve`."""

from __future__ import annotations

import logging
import re
import threading

import httpx
import pytest

from app import cli
from app.engine.engine import Engine
from app.main import create_app
from tests.api.live import DEADLINE_S, live_server, wait_for
from tests.api.support import assert_error


@pytest.fixture
def gated_loading(monkeypatch, shared_engine):
    """Engine.from_settings waits for the returned event, then gives the shared engine (or raises
    when the test put an exception in `failure`)."""
    release, entered, failure = threading.Event(), threading.Event(), []

    def load(settings) -> Engine:
        entered.set()
        assert release.wait(DEADLINE_S), "the test never released the model"
        if failure:
            raise failure[0]
        return shared_engine

    monkeypatch.setattr(Engine, "from_settings", staticmethod(load))
    return release, entered, failure


def test_health_answers_while_the_model_loads_and_ready_once_loaded(settings, gated_loading):
    release, entered, _ = gated_loading
    with live_server(create_app(settings)) as server, httpx.Client(base_url=server.url, timeout=DEADLINE_S) as client:
        assert entered.wait(DEADLINE_S), "the model never started loading"
        health = client.get("/healthz")
        loading = client.get("/readyz")
        generate = client.post("/v1/generate", json={"prompt": "The capital of"})
        release.set()
        ready = wait_for(lambda: (r := client.get("/readyz")).status_code == 200 and r, "/readyz 200")

    assert health.status_code == 200
    assert_error(loading, 503, "not_ready", "loading the model")
    assert loading.headers["Retry-After"] == "5"
    assert_error(generate, 503, "not_ready", "loading the model")
    assert ready.json()["status"] == "ready"


def test_serve_logs_serving_on_with_the_port_open_and_exits_1_when_start_up_fails(settings, gated_loading, monkeypatch, caplog):
    release, entered, failure = gated_loading
    monkeypatch.setattr(cli, "get_settings", lambda: settings.model_copy(update={"port": 0}))
    monkeypatch.setattr(cli, "configure_logging", lambda level="INFO": None)
    caplog.set_level(logging.INFO, logger="app.cli")
    status: list[int] = []
    thread = threading.Thread(target=lambda: status.append(cli.main(["serve"])), daemon=True)
    thread.start()

    def serving_on() -> str | None:
        found = [r.getMessage() for r in caplog.records if r.getMessage().startswith("serving on ")]
        return found[0] if found else None

    line = wait_for(serving_on, 'the "serving on" line')
    url = re.match(r"serving on (http://\S+)", line).group(1)
    assert entered.wait(DEADLINE_S)
    health = httpx.get(f"{url}/healthz", timeout=DEADLINE_S)
    loading = httpx.get(f"{url}/readyz", timeout=DEADLINE_S)
    failure.append(RuntimeError("no such model"))
    release.set()
    thread.join(DEADLINE_S)

    assert health.status_code == 200  # the port was open when the line was logged, the model loading
    assert_error(loading, 503, "not_ready", "loading the model")
    assert not thread.is_alive() and status == [1]
