"""Engine and session factory for SQLite (one machine) or PostgreSQL (shared), and migrations."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

if TYPE_CHECKING:
    from alembic.config import Config

SQLITE_BUSY_TIMEOUT_S = 30.0
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
    return database in ("", ":memory:") or "mode=memory" in database or (
        url.query.get("mode") == "memory"
    )


def make_engine(url: str | URL, *, echo: bool = False) -> Engine:
    """An Engine for `url`, configured for this service (SQLite pragmas, PostgreSQL via psycopg)."""
    parsed = normalize_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _make_sqlite_engine(parsed, echo=echo)
    if backend == "postgresql":
        return create_engine(parsed, echo=echo, pool_pre_ping=True)
    raise ValueError(
        f"unsupported database URL {parsed.render_as_string(hide_password=True)!r}; "
        "use sqlite:///path/to.db or postgresql://user@host/db"
    )


def _make_sqlite_engine(url: URL, *, echo: bool) -> Engine:
    kwargs: dict[str, Any] = {
        "echo": echo,
        "connect_args": {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S},
    }
    memory = _is_sqlite_memory(url)
    if memory:
        # One shared connection, or every checkout would see its own empty database.
        kwargs["poolclass"] = StaticPool
    elif url.database and not url.database.startswith("file:"):
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
            cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
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
            config.attributes["connection"] = connection
            command.upgrade(config, revision)  # env.py commits
    finally:
        if owned:
            engine.dispose()
