"""Start-up recovery: work a dead process left half done goes back to the queue."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from app.domain import EditStatus, RunStatus
from app.store.models import Edit, TrainingRun
from app.store.runs import ACTIVE_RUN_STATUSES
from app.store.types import require_aware, utcnow

IN_FLIGHT_EDIT_STATUSES = (EditStatus.PLANNED, EditStatus.TRAINING)


@dataclass(frozen=True)
class RequeuedEdit:
    edit_id: int
    previous_status: EditStatus
    training_run_id: int | None  # the run that had claimed it


@dataclass(frozen=True)
class RecoveryReport:
    """What `requeue_interrupted` changed, so the caller can write one audit event per change."""

    requeued_edits: tuple[RequeuedEdit, ...] = ()
    interrupted_run_ids: tuple[int, ...] = ()

    @property
    def edit_ids(self) -> tuple[int, ...]:
        return tuple(edit.edit_id for edit in self.requeued_edits)

    @property
    def changed(self) -> bool:
        return bool(self.requeued_edits or self.interrupted_run_ids)


def requeue_interrupted(session: Session, *, stale_before: datetime | None = None) -> RecoveryReport:
    """Mark queued/running runs interrupted and return their planned/training edits to pending.

    Call it once at start-up of the (single) trainer, before it claims anything. With
    `stale_before`, only runs whose last sign of life (heartbeat, else start, else creation) is
    older are interrupted, and edits claimed by runs still alive are left alone: a replica can
    then recover a dead trainer's work without disturbing a live one.
    """
    now = utcnow()
    runs_stmt = select(TrainingRun).where(TrainingRun.status.in_(ACTIVE_RUN_STATUSES))
    if stale_before is not None:
        last_seen = func.coalesce(TrainingRun.heartbeat_at, TrainingRun.started_at, TrainingRun.created_at)
        runs_stmt = runs_stmt.where(last_seen < require_aware(stale_before, name="stale_before"))
    runs = list(session.scalars(runs_stmt.order_by(TrainingRun.id).with_for_update()))
    for run in runs:
        run.status = RunStatus.INTERRUPTED
        run.finished_at = now
    session.flush()

    still_active = select(TrainingRun.id).where(TrainingRun.status.in_(ACTIVE_RUN_STATUSES))
    edits_stmt = (
        select(Edit)
        .where(
            Edit.status.in_(IN_FLIGHT_EDIT_STATUSES),
            or_(Edit.training_run_id.is_(None), Edit.training_run_id.not_in(still_active)),
        )
        .order_by(Edit.id)
        .with_for_update()
    )
    edits = list(session.scalars(edits_stmt))
    requeued = tuple(RequeuedEdit(edit_id=e.id, previous_status=e.status, training_run_id=e.training_run_id) for e in edits)
    for edit in edits:
        edit.status = EditStatus.PENDING
        edit.training_run_id = None
        edit.updated_at = now
    session.flush()
    return RecoveryReport(requeued_edits=requeued, interrupted_run_ids=tuple(run.id for run in runs))
