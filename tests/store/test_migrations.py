"""The Alembic migration: creates the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.orm import Session

from app.domain import SubjectSource
from app.store import Base, Edit, get_stack_version, make_engine, migrate
from app.store.db import MIGRATIONS_DIR
from tests.pg import temporary_database_url

REPO_ROOT = Path(__file__).resolve().parents[2]
HEAD = "0007"
TABLES = {"edits", "experts", "training_runs", "audit_events", "stack_state", "idempotency_keys", "api_keys"}


def head_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def test_migration_creates_all_tables(engine: Engine) -> None:
    tables = set(inspect(engine).get_table_names())
    assert TABLES | {"alembic_version"} <= tables
    assert head_revision(engine) == HEAD
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
    assert head_revision(engine) == HEAD
    with engine.connect() as conn:
        # Nothing was recreated: the row kept its value.
        assert conn.execute(text("SELECT version FROM stack_state")).scalar() == 7


def test_migrate_works_from_any_working_directory(backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
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
            assert head_revision(engine) == HEAD
        finally:
            engine.dispose()


def test_upgrade_backfills_subject_source_of_existing_edits(backend: str, tmp_path: Path) -> None:
    """0003 on a database with edits: those with a subject got it from their client."""
    with temporary_database_url(backend, tmp_path, migrated=False) as url:
        engine = make_engine(url)
        try:
            migrate(engine, revision="0002")
            assert head_revision(engine) == "0002"
            with engine.begin() as conn:
                for prompt, subject in (("The capital of France is", "France"), ("Who wrote it?", None)):
                    conn.execute(
                        text(
                            "INSERT INTO edits (prompt, target, subject, rephrases, status, created_at, "
                            "updated_at) VALUES (:p, 'x', :s, '[]', 'applied', :t, :t)"
                        ),
                        {"p": prompt, "s": subject, "t": "2026-01-01 00:00:00"},
                    )
            migrate(engine)
            assert head_revision(engine) == HEAD
            with engine.connect() as conn:
                rows = conn.execute(text("SELECT subject, subject_source FROM edits ORDER BY id")).all()
            assert [tuple(r) for r in rows] == [("France", "client"), (None, None)]
            with Session(engine) as s:  # and the model reads them
                sources = s.scalars(select(Edit.subject_source).order_by(Edit.id)).all()
            assert sources == [SubjectSource.CLIENT, None]
        finally:
            engine.dispose()


def test_upgrade_backfills_the_stack_order_of_existing_experts(backend: str, tmp_path: Path) -> None:
    """0006 on a database with experts: each keeps its place (its id); none was replaced."""
    with temporary_database_url(backend, tmp_path, migrated=False) as url:
        engine = make_engine(url)
        try:
            migrate(engine, revision="0004")
            with engine.begin() as conn:
                for name in ("expert-r1-b0", "expert-r2-b0"):
                    conn.execute(
                        text(
                            "INSERT INTO experts (name, path, sha256, status, edit_count, created_at) VALUES (:n, :p, :s, 'active', 1, :t)"
                        ),
                        {"n": name, "p": f"experts/{name}", "s": "0" * 64, "t": "2026-01-01 00:00:00"},
                    )
            migrate(engine)
            assert head_revision(engine) == HEAD
            with engine.connect() as conn:
                rows = conn.execute(text("SELECT id, stack_order, replaced_by_id FROM experts ORDER BY id")).all()
            assert [tuple(r) for r in rows] == [(1, 1, None), (2, 2, None)]
        finally:
            engine.dispose()
