"""Engine, session factory and readiness ping, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError, IntegrityError, StatementError
from sqlalchemy.orm import Session, sessionmaker

from app.domain import EditStatus
from app.store import Edit, add_edits, get_edit, make_engine, migrate, normalize_url, pending_edit, ping


def test_make_engine_configures_backend(backend: str, engine: Engine, db_url: str) -> None:
    with engine.connect() as conn:
        if backend == "sqlite":
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        else:
            assert engine.dialect.driver == "psycopg"
            # The per-test schema really is where this engine's connections look.
            schema = conn.exec_driver_sql("SELECT current_schema()").scalar()
            assert schema and schema.startswith("t_")
            assert schema in db_url


def test_make_engine_creates_sqlite_parent_directory(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "lemoe.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        assert path.is_file()
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "url",
    ["postgresql://u@db.example:5432/lemoe", "postgres://u@db.example/lemoe"],
)
def test_make_engine_rewrites_plain_postgresql_urls_to_psycopg(url: str) -> None:
    engine = make_engine(url)  # no connection is made here
    assert engine.dialect.name == "postgresql"
    assert engine.dialect.driver == "psycopg"
    assert normalize_url(url).drivername == "postgresql+psycopg"


def test_make_engine_refuses_unsupported_database() -> None:
    with pytest.raises(ValueError, match="unsupported database URL 'mysql://u:\\*\\*\\*@h/db'"):
        make_engine("mysql://u:secret@h/db")


def test_in_memory_sqlite_is_one_database_across_sessions() -> None:
    engine = make_engine("sqlite://")
    try:
        migrate(engine)
        with Session(engine) as s:
            add_edits(s, edits=[pending_edit("p", "t")])
            s.commit()
        with Session(engine) as s:
            assert get_edit(s, edit_id=1) is not None
    finally:
        engine.dispose()


def test_ping_succeeds_on_a_live_database(session: Session) -> None:
    assert ping(session) is None


def test_ping_raises_when_database_unusable(backend: str, tmp_path: Path) -> None:
    if backend == "sqlite":
        garbage = tmp_path / "garbage.db"
        garbage.write_bytes(b"this is not an SQLite database file" * 100)
        url = f"sqlite:///{garbage}"
    else:
        url = "postgresql://postgres@127.0.0.1:1/test?connect_timeout=2"  # nothing listens
    engine = make_engine(url)
    try:
        with Session(engine) as s, pytest.raises(DBAPIError):
            ping(s)
    finally:
        engine.dispose()


def test_session_factory_keeps_objects_readable_after_commit(
    session_factory: sessionmaker[Session],
) -> None:
    with session_factory() as s:
        (edit,) = add_edits(s, edits=[pending_edit("The capital of France is", " Lyon")])
        s.commit()
    # Session closed: attributes must not need a refresh from the database.
    assert edit.target == " Lyon"
    assert edit.status is EditStatus.PENDING


def test_foreign_keys_are_enforced(session: Session) -> None:
    now = datetime.now(UTC)
    session.add(Edit(prompt="p", target="t", rephrases=[], status="pending", expert_id=999, created_at=now, updated_at=now))
    with pytest.raises(IntegrityError):
        session.flush()


def test_timestamps_round_trip_timezone_aware(session_factory: sessionmaker[Session]) -> None:
    plus_two = timezone(timedelta(hours=2))
    with session_factory() as s:
        (edit,) = add_edits(s, edits=[pending_edit("p", "t")])
        edit.applied_at = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=plus_two)
        created = edit.created_at
        s.commit()
        edit_id = edit.id
    with session_factory() as s:
        loaded = get_edit(s, edit_id=edit_id)
        assert loaded is not None
        assert loaded.created_at.tzinfo is not None
        assert loaded.created_at.utcoffset() == timedelta(0)
        assert loaded.created_at == created
        assert loaded.applied_at == datetime(2024, 5, 1, 10, 30, 15, 123456, tzinfo=UTC)
        assert loaded.applied_at.utcoffset() == timedelta(0)


def test_naive_datetime_is_refused(session: Session) -> None:
    (edit,) = add_edits(session, edits=[pending_edit("p", "t")])
    edit.applied_at = datetime(2024, 5, 1, 12, 0)  # no tzinfo
    with pytest.raises(StatementError, match="timezone-aware"):
        session.flush()


def test_timestamps_are_stored_as_utc(backend: str, engine: Engine) -> None:
    """SQLite has no zones: values are kept as UTC text, so comparing the text orders them right."""
    with Session(engine) as s:
        (edit,) = add_edits(s, edits=[pending_edit("p", "t")])
        edit.applied_at = datetime(2024, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=5)))
        s.commit()
    with engine.connect() as conn:
        if backend == "sqlite":
            raw = conn.execute(text("SELECT applied_at FROM edits")).scalar()
        else:
            raw = conn.execute(text("SELECT to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') FROM edits")).scalar()
    assert raw.startswith("2023-12-31 20:00:00")
