"""Readiness: the model is loaded and the database answers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from app import store
from app.errors import NotReady
from app.services.stack import LiveStack

if TYPE_CHECKING:
    from app.engine.engine import Engine


@dataclass(frozen=True)
class ReadinessReport:
    model: str
    device: str
    active_experts: list[str]
    stack_version: int


def readiness(
    *, session_factory: sessionmaker[Session], engine: Engine | None, stack: LiveStack | None
) -> ReadinessReport:
    if engine is None or stack is None:
        raise NotReady("the model is not loaded yet")
    try:
        with session_factory() as session:
            store.ping(session)
            version = store.get_stack_version(session)
    except Exception as exc:  # any driver error means "not ready", never a 500
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        raise NotReady(f"the database is unreachable: {type(exc).__name__}: {reason}") from None
    return ReadinessReport(
        model=engine.model_name,
        device=engine.device,
        active_experts=stack.active_names(),
        stack_version=version,
    )
