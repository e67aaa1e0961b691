"""What one running app holds: settings, database, engine, live stack, worker hooks, metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine as DatabaseEngine
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.services.stack import LiveStack

if TYPE_CHECKING:
    from app.engine.engine import Engine
    from app.metrics_prom import Metrics


@dataclass
class Runtime:
    settings: Settings
    database: DatabaseEngine
    session_factory: sessionmaker[Session]
    metrics: Metrics
    engine: Engine | None = None  # set by the lifespan once the model is loaded
    stack: LiveStack | None = None
    worker: Any = None  # the TrainingWorker when this process trains (tests call run_once)
    wake_worker: Callable[[], None] | None = None
    worker_state: Callable[[], str] = field(default=lambda: "disabled")
