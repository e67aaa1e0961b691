"""Alembic environment for lemoe-server.

Where the database comes from, first match wins:
  1. `config.attributes["connection"]`: an open Connection (what `app.store.db.migrate` passes);
  2. `config.attributes["url"]`;
  3. `alembic -x url=...` on the command line;
  4. `sqlalchemy.url` in alembic.ini;
  5. the app's settings (DATABASE_URL / LEMOE_DATABASE_URL, default under the data dir).
"""

from __future__ import annotations

import logging.config

from alembic import context
from sqlalchemy.engine import Connection

from app.store.db import make_engine, normalize_url
from app.store.models import Base

# Every replica may migrate at start-up; on PostgreSQL they take turns on this advisory lock
# (an arbitrary constant, "lemoe" in ASCII) so two never create the same table at once.
MIGRATION_LOCK_ID = 0x6C656D6F65

config = context.config
target_metadata = Base.metadata

# Only the command line configures logging; a programmatic call keeps the host's logging.
if config.config_file_name is not None and "connection" not in config.attributes:
    logging.config.fileConfig(config.config_file_name, disable_existing_loggers=False)


def database_url() -> str:
    url = config.attributes.get("url") or context.get_x_argument(as_dictionary=True).get("url")
    url = url or config.get_main_option("sqlalchemy.url")
    if not url:
        from app.config import get_settings

        url = get_settings().resolved_database_url
    return normalize_url(url).render_as_string(hide_password=False)


def run_migrations_offline() -> None:
    """Emit the SQL script instead of running it (`alembic upgrade head --sql`)."""
    url = database_url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=url.startswith("sqlite"),
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_on(connection: Connection) -> None:
    """Run the migrations on `connection` and commit them."""
    is_sqlite = connection.dialect.name == "sqlite"
    if is_sqlite:
        # A copy-and-swap batch migration drops tables that others reference; with foreign keys
        # enforced that would fail (or cascade). The pragma only works outside a transaction.
        connection.commit()
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
    try:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            # SQLite cannot ALTER most things in place: later migrations copy-and-swap tables.
            render_as_batch=is_sqlite,
            compare_type=True,
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_ID})")
            context.run_migrations()
        connection.commit()
        if is_sqlite:
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise RuntimeError(f"migration left rows with dangling foreign keys: {broken[:10]}")
    finally:
        if is_sqlite:
            connection.rollback()
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            connection.commit()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_on(connection)
        return
    engine = make_engine(database_url())
    try:
        with engine.connect() as connection:
            run_on(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
