"""Training runs as clients see them: the manual trigger and reading runs (the HTTP side).

Executing a run is `app.services.training`'s.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import store
from app.config import Settings
from app.domain import AuditAction, EditStatus, RunStatus, RunTrigger
from app.errors import Conflict, NothingToTrain, RunAlreadyActive, RunNotFound
from app.services.checks import store_errors

# A run created concurrently elsewhere finished between our insert and our look-up: try again.
CREATE_ATTEMPTS = 3


def trigger_run(session: Session, *, settings: Settings, actor: str, on_behalf_of: str | None = None) -> store.TrainingRun:
    """Queue a manual run now; 409 when one is already queued/running or nothing is pending.

    "One active run" holds across every replica: the database refuses a second queued/running
    row (a unique index), so two triggers racing in two processes get one run and one 409.
    """
    for _ in range(CREATE_ATTEMPTS):
        active = store.active_run(session)
        if active is not None:
            raise RunAlreadyActive(active.id, active.status.value)
        pending = store.count_edits(session, status=EditStatus.PENDING)
        if pending == 0:
            raise NothingToTrain(
                "no pending edits to train: submit edits with POST /v1/edits first (GET /v1/edits?status=pending lists the queue)"
            )
        try:
            run = store.create_run(
                session,
                trigger=RunTrigger.MANUAL,
                actor=actor,
                edits_total=min(pending, settings.worker_max_batch),
            )
            store.append_audit(
                session,
                actor=actor,
                action=AuditAction.RUN_CREATED,
                training_run_id=run.id,
                payload={"trigger": RunTrigger.MANUAL.value, "pending": pending},
                on_behalf_of=on_behalf_of,
            )
            session.commit()
            return run
        except IntegrityError as exc:
            session.rollback()
            if not store.is_second_active_run(exc):
                raise
            # Another replica's run won the race: the next look-up names it.
    raise Conflict("training runs are being created concurrently; retry shortly")


def get_run(session: Session, *, run_id: int) -> store.TrainingRun:
    run = store.get_run(session, run_id=run_id)
    if run is None:
        raise RunNotFound(run_id)
    return run


def list_runs(
    session: Session,
    *,
    status: RunStatus | None = None,
    limit: int = store.DEFAULT_LIMIT,
    cursor: str | None = None,
) -> store.Page[store.TrainingRun]:
    with store_errors():
        return store.list_runs(session, status=status, limit=limit, cursor=cursor or None)


def expert_ids_by_run(session: Session, *, run_ids: Sequence[int]) -> dict[int, list[int]]:
    wanted = set(run_ids)
    out: dict[int, list[int]] = defaultdict(list)
    if wanted:
        for expert in store.list_experts(session):
            if expert.training_run_id in wanted:
                out[expert.training_run_id].append(expert.id)
    return out


def eta_seconds(run: store.TrainingRun, elapsed_s: float | None) -> float | None:
    """Seconds a running run still needs at its pace so far: the time per step done, times the
    steps planned and not done (an upper estimate: planned counts each untrained expert's step
    limit). None when the run is not running or has trained nothing yet."""
    if run.status is not RunStatus.RUNNING or elapsed_s is None or not run.steps_done or run.steps_planned is None:
        return None
    left = max(run.steps_planned - run.steps_done, 0)
    return round(elapsed_s / run.steps_done * left, 1)
