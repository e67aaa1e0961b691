"""Fixtures of the API tests: apps on the tiny model, SQLite or PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.engine.engine import Engine
from tests.api.support import running_app, shared_engine, tiny_model_dir, tiny_settings
from tests.pg import DATABASE_BACKENDS, temporary_database_url

__all__ = ["shared_engine", "tiny_model_dir"]


@pytest.fixture(params=DATABASE_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def settings(tiny_model_dir: Path, tmp_path: Path) -> Settings:
    """SQLite in a fresh data dir."""
    return tiny_settings(tiny_model_dir, tmp_path / "data")


@pytest.fixture
def client(settings: Settings, shared_engine: Engine) -> Iterator[TestClient]:
    with running_app(settings, shared_engine) as client:
        yield client


@pytest.fixture
def db_settings(backend: str, tiny_model_dir: Path, tmp_path: Path) -> Iterator[Settings]:
    """Like `settings`, on SQLite or on a throw-away PostgreSQL schema."""
    with temporary_database_url(backend, tmp_path) as url:
        yield tiny_settings(tiny_model_dir, tmp_path / "data", database_url=url)


@pytest.fixture
def db_client(db_settings: Settings, shared_engine: Engine) -> Iterator[TestClient]:
    with running_app(db_settings, shared_engine) as client:
        yield client
