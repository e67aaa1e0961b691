"""Engine and session factory for SQLite (one machine) or PostgreSQL (shared), and migrations."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

if TYPE_CHECKING:
    from alembic.config import Config

SQLITE_BUSY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class DatabaseOptions:
    """Bounds on a slow or hung database; None: the driver's / SQLAlchemy's default.

    A limit already in the URL (`?connect_timeout=`, `options=-c statement_timeout=...`) wins.
    """

    connect_timeout_s: float | None = None  # PostgreSQL: libpq connect_timeout (whole s, >= 2)
    statement_timeout_s: float | None = None  # PostgreSQL: server-side statement_timeout; 0: none
    pool_timeout_s: float | None = None  # wait for a free pooled connection (sqlalchemy TimeoutError)
    pool_size: int | None = None
    max_overflow: int | None = None
    sqlite_busy_timeout_s: float = SQLITE_BUSY_TIMEOUT_S


# The repository's `migrations/` folder sits next to the `app` package, in a checkout and when
# installed (pyproject packages both), so it is found from any working directory.
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def normalize_url(url: str | URL) -> URL:
    """Parse `url`; a plain `postgresql://` (or `postgres://`) URL is pointed at psycopg 3."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _is_sqlite_memory(url: URL) -> bool:
    database = url.database or ""
    return database in ("", ":memory:") or "mode=memory" in database or (url.query.get("mode") == "memory")


def make_engine(url: str | URL, *, echo: bool = False, options: DatabaseOptions | None = None) -> Engine:
    """An Engine for `url`, configured for this service (SQLite pragmas, PostgreSQL via psycopg)."""
    parsed = normalize_url(url)
    options = options or DatabaseOptions()
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _make_sqlite_engine(parsed, echo=echo, options=options)
    if backend == "postgresql":
        return create_engine(
            parsed,
            echo=echo,
            pool_pre_ping=True,
            connect_args=_postgres_connect_args(parsed, options),
            **_pool_kwargs(options),
        )
    raise ValueError(
        f"unsupported database URL {parsed.render_as_string(hide_password=True)!r}; use sqlite:///path/to.db or postgresql://user@host/db"
    )


def _pool_kwargs(options: DatabaseOptions) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if options.pool_timeout_s is not None:
        kwargs["pool_timeout"] = options.pool_timeout_s
    if options.pool_size is not None:
        kwargs["pool_size"] = options.pool_size
    if options.max_overflow is not None:
        kwargs["max_overflow"] = options.max_overflow
    return kwargs


def _postgres_connect_args(url: URL, options: DatabaseOptions) -> dict[str, Any]:
    """libpq connect_timeout and a server-side statement_timeout, merged with the URL's own."""
    args: dict[str, Any] = {}
    if options.connect_timeout_s is not None and "connect_timeout" not in url.query:
        args["connect_timeout"] = max(2, math.ceil(options.connect_timeout_s))
    if options.statement_timeout_s is not None:
        given = url.query.get("options", "")
        given = " ".join(given) if isinstance(given, tuple) else given
        if "statement_timeout" not in given:
            # connect_args replace the URL's `options` (e.g. a search_path): keep them.
            millis = math.ceil(options.statement_timeout_s * 1000)
            args["options"] = f"{given} -c statement_timeout={millis}".strip()
    return args


def _make_sqlite_engine(url: URL, *, echo: bool, options: DatabaseOptions) -> Engine:
    busy_timeout_s = options.sqlite_busy_timeout_s
    kwargs: dict[str, Any] = {
        "echo": echo,
        "connect_args": {"check_same_thread": False, "timeout": busy_timeout_s},
    }
    memory = _is_sqlite_memory(url)
    if memory:
        # One shared connection, or every checkout would see its own empty database.
        kwargs["poolclass"] = StaticPool
    else:
        kwargs.update(_pool_kwargs(options))
    if not memory and url.database and not url.database.startswith("file:"):
        Path(url.database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            if not memory:
                # Readers do not block the writer, nor the writer the readers.
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")  # safe under WAL
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        finally:
            cursor.close()

    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose objects stay readable after commit (responses are built after the commit)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def ping(session: Session) -> None:
    """Raise if the database cannot answer a trivial query (readiness check)."""
    session.execute(text("SELECT 1")).scalar_one()


def alembic_config(url: str | URL | None = None) -> Config:
    """An Alembic Config for this repository's migrations, built in code (no alembic.ini needed)."""
    from alembic.config import Config  # imported late: `import app.store` stays light

    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise FileNotFoundError(f"Alembic migrations not found at {MIGRATIONS_DIR}")
    config = Config()
    # ConfigParser interpolates '%': escape it in the path.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if url is not None:
        config.attributes["url"] = url
    return config


def migrate(url_or_engine: str | URL | Engine, *, revision: str = "head") -> None:
    """Bring the schema up to `revision` (`alembic upgrade head`); a no-op when already there."""
    from alembic import command

    if isinstance(url_or_engine, Engine):
        engine, owned = url_or_engine, False
    else:
        engine, owned = make_engine(url_or_engine), True
    try:
        config = alembic_config()
        with engine.connect() as connection:
            postgres = connection.dialect.name == "postgresql"
            if postgres:  # a migration (or the wait for another replica's) may take long
                connection.exec_driver_sql("SET statement_timeout = 0")
                connection.commit()
            config.attributes["connection"] = connection
            command.upgrade(config, revision)  # env.py commits
            if postgres:  # back to the engine's limit before the connection returns to the pool
                connection.exec_driver_sql("RESET statement_timeout")
                connection.commit()
    finally:
        if owned:
            engine.dispose()
