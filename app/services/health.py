"""Readiness: the model is loaded, the database answers, and which stack this process serves."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from app import store
from app.errors import NotReady
from app.services.stack import LiveStack, Quarantined

if TYPE_CHECKING:
    from app.engine.engine import Engine


@dataclass(frozen=True)
class ReadinessReport:
    model: str
    device: str
    served_experts: list[str]  # what this process really serves, oldest first
    stack_version: int  # the active-stack version this process has loaded
    database_stack_version: int  # the version in SQL now
    quarantined: list[Quarantined]  # active in SQL, not served here: their files are bad

    @property
    def stale(self) -> bool:
        """This process has not (yet) loaded the stack SQL holds now."""
        return self.stack_version != self.database_stack_version

    @property
    def degraded(self) -> bool:
        return bool(self.quarantined)


def readiness(
    *,
    session_factory: sessionmaker[Session],
    engine: Engine | None,
    stack: LiveStack | None,
    stage: str = "starting",
) -> ReadinessReport:
    """503 until the model is loaded and while the database does not answer. The message never
    carries the driver's text (it names hosts and ports): only the kind of error."""
    if engine is None or stack is None or stack.version is None:
        raise NotReady(f"not ready: {stage}", headers={"Retry-After": "5"})
    try:
        with session_factory() as session:
            store.ping(session)
            version = store.get_stack_version(session)
    except Exception as exc:  # any driver error means "not ready", never a 500
        raise NotReady(f"the database is unreachable ({type(exc).__name__})") from None
    with stack.lock:  # one consistent snapshot of what this process serves
        served = stack.active_names()
        loaded = stack.version
        quarantined = sorted(stack.quarantined.values(), key=lambda q: q.expert_id)
    return ReadinessReport(
        model=engine.model_name,
        device=engine.device,
        served_experts=served,
        stack_version=loaded or 0,
        database_stack_version=version,
        quarantined=quarantined,
    )
