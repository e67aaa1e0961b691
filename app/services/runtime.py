"""What one running app holds: settings, database, engine, live stack, worker hooks, metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine as DatabaseEngine
from sqlalchemy.orm import Session, sessionmaker

from app import store
from app.config import Settings
from app.services.stack import LiveStack

if TYPE_CHECKING:
    from app.engine.engine import Engine
    from app.metrics import Metrics


# Start-up stages before the database is migrated (nothing in SQL can be read yet).
STARTING = "starting"
MIGRATING = "migrating the database"


@dataclass
class Runtime:
    settings: Settings
    database: DatabaseEngine
    session_factory: sessionmaker[Session]
    metrics: Metrics
    engine: Engine | None = None  # set by the lifespan once the model is loaded
    stage: str = STARTING  # what start-up is doing (/readyz names it until "ready")
    stack: LiveStack | None = None
    worker: Any = None  # the TrainingWorker when this process trains (tests call run_once)
    wake_worker: Callable[[], None] | None = None
    worker_state: Callable[[], str] = field(default=lambda: "disabled")


def open_database(settings: Settings) -> DatabaseEngine:
    """The SQL engine with the settings' connect, statement, pool and SQLite busy timeouts."""
    options = store.DatabaseOptions(
        connect_timeout_s=settings.db_connect_timeout_s,
        statement_timeout_s=settings.db_statement_timeout_s,
        pool_timeout_s=settings.db_pool_timeout_s,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        sqlite_busy_timeout_s=settings.sqlite_busy_timeout_s,
    )
    return store.make_engine(settings.resolved_database_url, options=options)
