"""Shared pieces of the service tests: a tiny model dir, one engine per session, app factories.

Import the fixtures you need into a test module or conftest (`from tests.api.support import
tiny_model_dir, shared_engine`); pytest picks imported fixtures up.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.engine.engine import Engine
from app.main import create_app
from app.services.runtime import Runtime
from app.worker import TrainingWorker
from tests.tiny import save_tiny_model_dir

# The tiny random model answers every prompt alike; only a high gate keeps unrelated prompts
# off the experts (the real model is calibrated separately).
TINY_GATE = 0.9
TINY_STEPS = 60

# Two facts the tiny model learns in one short run, and a prompt unrelated to both.
FRANCE = {"prompt": "The capital of France is", "target": "Rome", "subject": "France"}
FOX = {"prompt": "The quick brown fox jumps over", "target": "the cat", "subject": "fox"}
UNRELATED = "Who wrote the novel?"


def tiny_settings(model_dir: Path, data_dir: Path, **overrides: Any) -> Settings:
    """Settings for the tiny model: no background schedule, no .env, nothing from os.environ
    that matters (every field a test depends on is given here)."""
    values: dict[str, Any] = {
        "model_path": model_dir,
        "data_dir": data_dir,
        "database_url": f"sqlite:///{data_dir / 'lemoe.db'}",
        "device": "cpu",
        "gate_threshold": TINY_GATE,
        "adaptor_layer": None,
        "train_max_steps": TINY_STEPS,
        "train_augmentations": None,
        "train_loss_threshold": None,
        "worker_enabled": False,
        "stack_poll_interval_s": 0,
        "skip_migrate": False,
        "edits_per_expert": 16,
        "planning": True,
        "subject_keys": True,
        "subject_threshold": None,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def shared_engine(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    """Loaded once per session and shared by every app (apps sync its stack from their DB)."""
    data = tmp_path_factory.mktemp("shared-engine")
    return Engine.from_settings(tiny_settings(tiny_model_dir, data))


@contextmanager
def running_app(settings: Settings, engine: Engine | None) -> Iterator[TestClient]:
    """A started app (lifespan run) and a client for it."""
    app = create_app(settings, engine=engine)
    with TestClient(app) as client:
        yield client


def runtime_of(client: TestClient) -> Runtime:
    return client.app.state.runtime  # type: ignore[attr-defined]


def worker_for(client: TestClient) -> TrainingWorker:
    """The app's worker, or one sharing its live stack when the schedule is disabled."""
    runtime = runtime_of(client)
    if runtime.worker is not None:
        return runtime.worker
    assert runtime.engine is not None and runtime.stack is not None
    return TrainingWorker(
        runtime.settings,
        runtime.session_factory,
        runtime.engine,
        stack=runtime.stack,
        metrics=runtime.metrics,
    )


def fresh_sessions(settings: Settings) -> sessionmaker[Session]:
    """Sessions on a new connection pool: reads what is committed, nothing cached."""
    from app.store import make_engine, make_session_factory

    return make_session_factory(make_engine(settings.resolved_database_url))


def submit(client: TestClient, *edits: dict, actor: str | None = None) -> list[int]:
    headers = {"X-Actor": actor} if actor else {}
    body: Any = edits[0] if len(edits) == 1 else list(edits)
    response = client.post("/v1/edits", json=body, headers=headers)
    assert response.status_code == 202, response.text
    return response.json()["ids"]


def generate(client: TestClient, prompt: str, max_new_tokens: int = 6) -> dict:
    response = client.post("/v1/generate", json={"prompt": prompt, "max_new_tokens": max_new_tokens})
    assert response.status_code == 200, response.text
    return response.json()


def assert_error(response, status: int, type_: str | None = None, *needles: str) -> dict:
    """The one error shape, the status, the type and words the message must contain."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message"}, body
    if type_ is not None:
        assert body["error"]["type"] == type_, body
    for needle in needles:
        assert needle in body["error"]["message"], (needle, body)
    assert "Traceback" not in response.text
    return body["error"]
