"""The Alembic migration: creates the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, text
from sqlalchemy.orm import Session

from app.store import Base, get_stack_version, make_engine, migrate
from app.store.db import MIGRATIONS_DIR
from tests.pg import temporary_database_url

REPO_ROOT = Path(__file__).resolve().parents[2]
TABLES = {"edits", "experts", "training_runs", "audit_events", "stack_state", "idempotency_keys"}


def head_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def test_migration_creates_all_tables(engine: Engine) -> None:
    tables = set(inspect(engine).get_table_names())
    assert TABLES | {"alembic_version"} <= tables
    assert head_revision(engine) == "0002"
    with Session(engine) as s:
        assert get_stack_version(s) == 0
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id, version FROM stack_state")).all() == [(1, 0)]


def test_migrated_schema_matches_models(engine: Engine) -> None:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_upgrade_head_is_idempotent(db_url: str, engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE stack_state SET version = 7"))
    migrate(db_url)
    migrate(engine)
    assert head_revision(engine) == "0002"
    with engine.connect() as conn:
        # Nothing was recreated: the row kept its value.
        assert conn.execute(text("SELECT version FROM stack_state")).scalar() == 7


def test_migrate_works_from_any_working_directory(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with temporary_database_url(backend, tmp_path, migrated=False) as url:
        migrate(url)
        engine = make_engine(url)
        try:
            assert TABLES <= set(inspect(engine).get_table_names())
        finally:
            engine.dispose()
    assert MIGRATIONS_DIR == REPO_ROOT / "migrations"


def test_downgrade_to_base_then_upgrade_again(db_url: str, engine: Engine) -> None:
    from alembic import command

    from app.store.db import alembic_config

    with engine.connect() as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
    assert not TABLES & set(inspect(engine).get_table_names())
    migrate(engine)
    assert TABLES <= set(inspect(engine).get_table_names())


def test_alembic_command_line_from_repo_root(backend: str, tmp_path: Path) -> None:
    with temporary_database_url(backend, tmp_path, migrated=False) as url:
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "LEMOE_DATABASE_URL")}
        result = subprocess.run(
            [sys.executable, "-m", "alembic", "-x", f"url={url}", "upgrade", "head"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        engine = make_engine(url)
        try:
            assert TABLES <= set(inspect(engine).get_table_names())
            assert head_revision(engine) == "0002"
        finally:
            engine.dispose()
