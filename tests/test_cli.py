"""The `lemoe` console script: serve, migrate, worker wiring, and bench delegation."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from fastapi import FastAPI
from sqlalchemy import inspect

from app import cli
from app.config import get_settings
from app.store import make_engine


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Settings from a clean environment pointing at tmp_path; the settings cache is reset."""
    for name in ("DATABASE_URL", "LEMOE_DATABASE_URL", "LEMOE_HOST", "LEMOE_PORT", "LEMOE_AUTH", "LEMOE_ADMIN_KEY", "LEMOE_ADMIN_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no .env of the checkout
    monkeypatch.setenv("LEMOE_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    # The real one reconfigures the root logger (force=True): not inside pytest.
    monkeypatch.setattr(cli, "configure_logging", lambda level="INFO": None)
    yield monkeypatch
    get_settings.cache_clear()


def test_serve_runs_uvicorn_with_the_app(env, monkeypatch):
    env.setenv("LEMOE_AUTH", "off")  # no API key exists: otherwise only loopback may be bound (tests/test_cli_keys.py)
    calls = []
    monkeypatch.setattr("uvicorn.Server.run", lambda self, sockets=None: calls.append(self.config))

    assert cli.main(["serve", "--host", "0.0.0.0", "--port", "9123"]) == 0

    [config] = calls
    assert isinstance(config.app, FastAPI)
    assert (config.host, config.port) == ("0.0.0.0", 9123)
    assert config.access_log is False  # its lines carry query strings (prompts); the app logs its own


def test_serve_defaults_come_from_settings(env, monkeypatch):
    env.setenv("LEMOE_PORT", "8765")
    calls = []
    monkeypatch.setattr("uvicorn.Server.run", lambda self, sockets=None: calls.append(self.config))

    cli.main(["serve"])

    assert (calls[0].host, calls[0].port) == ("127.0.0.1", 8765)


def test_migrate_creates_the_schema(env, tmp_path):
    assert cli.main(["migrate"]) == 0

    database = make_engine(f"sqlite:///{tmp_path / 'data' / 'lemoe.db'}")
    tables = set(inspect(database).get_table_names())
    database.dispose()
    assert {"edits", "experts", "training_runs", "audit_events", "alembic_version"} <= tables


def test_invalid_settings_are_a_clear_exit_2(env, capsys):
    env.setenv("LEMOE_PORT", "not-a-port")

    assert cli.main(["migrate"]) == 2
    assert "invalid settings" in capsys.readouterr().err


def test_bench_says_so_when_the_benchmarks_are_absent(env, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "app.benchmarks.cli", None)  # import now raises ImportError

    assert cli.main(["bench", "quality", "--edits", "3"]) == 2
    assert "not available" in capsys.readouterr().err


def test_bench_delegates_to_the_benchmark_module(monkeypatch):
    added = []

    class FakeBench:
        @staticmethod
        def add_bench_parser(subparsers):
            parser = subparsers.add_parser("bench")
            parser.add_argument("--fake", action="store_true")
            parser.set_defaults(handler=lambda args: added.append(args.fake) or 0)

    monkeypatch.setitem(sys.modules, "app.benchmarks.cli", FakeBench)
    args = cli.build_parser().parse_args(["bench", "--fake"])

    assert args.handler(args) == 0 and added == [True]


def test_logging_is_configured_once_with_one_format(monkeypatch):
    calls = []
    monkeypatch.setattr("logging.basicConfig", lambda **kwargs: calls.append(kwargs))

    cli.configure_logging("debug")

    [kwargs] = calls
    assert kwargs["level"] == "DEBUG" and kwargs["format"] == cli.LOG_FORMAT


def test_every_command_is_listed():
    help_text = cli.build_parser().format_help()
    for command in ("serve", "migrate", "worker", "bench"):
        assert command in help_text
