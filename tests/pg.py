"""Throw-away migrated databases for tests: a PostgreSQL schema of its own, or a SQLite file.

Reuse from any test module or conftest:

    from tests.pg import temporary_database_url

    @pytest.fixture(params=DATABASE_BACKENDS)
    def db_url(request, tmp_path):
        with temporary_database_url(request.param, tmp_path) as url:
            yield url          # migrated to head; pass it to make_engine() or Settings

PostgreSQL comes from LEMOE_TEST_POSTGRES_URL (default: the local `test` database). Each call
creates a fresh schema `t_<hex>` and returns a URL whose connections use it as their
search_path, so concurrent tests never see each other's rows; the schema is dropped afterwards.
When the server cannot be reached the helper raises (tests fail loudly) unless
LEMOE_SKIP_POSTGRES=1 is set, in which case the PostgreSQL params skip.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from app.store.db import migrate, normalize_url

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BACKENDS = ("sqlite", "postgresql")
# For @pytest.fixture(params=...): the PostgreSQL param carries the `postgres` marker.
DATABASE_BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


class PostgresUnavailable(RuntimeError):
    """The test PostgreSQL server could not be reached."""


def postgres_base_url() -> URL:
    return normalize_url(os.environ.get("LEMOE_TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL)


def postgres_skipped() -> bool:
    return os.environ.get("LEMOE_SKIP_POSTGRES", "").strip().lower() in ("1", "true", "yes")


def skip_if_postgres_disabled(backend: str) -> None:
    """Skip the test when it is the PostgreSQL variant and LEMOE_SKIP_POSTGRES=1 is set."""
    if backend == "postgresql" and postgres_skipped():
        pytest.skip("PostgreSQL tests disabled by LEMOE_SKIP_POSTGRES=1")


def schema_url(base: URL, schema: str) -> URL:
    """`base` with every connection's search_path set to `schema` (libpq `options`)."""
    return base.update_query_dict({"options": f"-csearch_path={schema}"})


def _admin_engine(base: URL):
    return create_engine(base, isolation_level="AUTOCOMMIT", poolclass=NullPool, connect_args={"connect_timeout": 10})


# Set after the first failed connection, so every later test fails at once with the same reason.
_unreachable: str | None = None


@contextmanager
def temporary_postgres_url(*, migrated: bool = True, base_url: str | URL | None = None) -> Iterator[str]:
    """A URL (as a string, password included) for a fresh PostgreSQL schema, dropped on exit."""
    global _unreachable
    base = normalize_url(base_url) if base_url is not None else postgres_base_url()
    if _unreachable is not None and base_url is None:
        raise PostgresUnavailable(_unreachable)
    schema = f"t_{uuid.uuid4().hex}"
    admin = _admin_engine(base)
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except OperationalError as exc:
        admin.dispose()
        message = (
            f"cannot reach the test PostgreSQL at {base.render_as_string(hide_password=True)}: "
            f"{exc.orig}. Start it, point LEMOE_TEST_POSTGRES_URL at one, or set "
            "LEMOE_SKIP_POSTGRES=1 to skip the PostgreSQL variants."
        )
        if base_url is None:
            _unreachable = message
        raise PostgresUnavailable(message) from exc
    url = schema_url(base, schema).render_as_string(hide_password=False)
    try:
        if migrated:
            migrate(url)
        yield url
    finally:
        with admin.connect() as conn:
            # A connection a test leaked would make DROP wait forever; fail instead.
            conn.execute(text("SET lock_timeout = '10s'"))
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


_sqlite_template: Path | None = None


def _migrated_sqlite_template() -> Path:
    """One migrated SQLite file per test process; copying it is ~50x faster than migrating."""
    global _sqlite_template
    if _sqlite_template is None or not _sqlite_template.is_file():
        directory = Path(tempfile.mkdtemp(prefix="lemoe-sqlite-template-"))
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        path = directory / "template.db"
        migrate(f"sqlite:///{path}")  # disposes its engine: the WAL is folded into the file
        _sqlite_template = path
    return _sqlite_template


@contextmanager
def temporary_sqlite_url(directory: Path, *, migrated: bool = True) -> Iterator[str]:
    """A URL for a new SQLite file under `directory` (e.g. pytest's tmp_path)."""
    path = Path(directory) / f"lemoe-{uuid.uuid4().hex[:8]}.db"
    if migrated:
        shutil.copyfile(_migrated_sqlite_template(), path)
    yield f"sqlite:///{path}"


@contextmanager
def temporary_database_url(backend: str, directory: Path, *, migrated: bool = True) -> Iterator[str]:
    """A throw-away database URL for `backend` ("sqlite" or "postgresql"), migrated to head."""
    if backend == "sqlite":
        with temporary_sqlite_url(directory, migrated=migrated) as url:
            yield url
    elif backend == "postgresql":
        skip_if_postgres_disabled(backend)
        with temporary_postgres_url(migrated=migrated) as url:
            yield url
    else:
        raise ValueError(f"unknown backend {backend!r}; one of {list(BACKENDS)}")
