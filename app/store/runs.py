"""Queries on training runs: queued -> running -> succeeded | failed | interrupted."""

from __future__ import annotations

from sqlalchemy import case, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.domain import RunStatus, RunTrigger
from app.store.errors import InvalidTransition, RecordNotFound
from app.store.models import ONE_ACTIVE_RUN_INDEX, TrainingRun
from app.store.pagination import DEFAULT_LIMIT, Page, paginate
from app.store.types import coerce_enum, utcnow

ACTIVE_RUN_STATUSES = (RunStatus.QUEUED, RunStatus.RUNNING)
FINAL_RUN_STATUSES = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.INTERRUPTED)


def create_run(session: Session, *, trigger: RunTrigger | str, actor: str, edits_total: int = 0) -> TrainingRun:
    """A new queued run. While another run is queued or running the database refuses it: the
    flush (or the commit) raises an IntegrityError that `is_second_active_run` recognises, and
    the caller must roll its transaction back."""
    run = TrainingRun(
        status=RunStatus.QUEUED,
        trigger=coerce_enum(RunTrigger, trigger, name="trigger"),
        actor=actor,
        edits_total=edits_total,
        edits_done=0,
        steps_done=0,
        experts_created=0,
        created_at=utcnow(),
    )
    session.add(run)
    session.flush()
    return run


def get_run(session: Session, *, run_id: int) -> TrainingRun | None:
    return session.get(TrainingRun, run_id)


def _require_run(session: Session, run_id: int) -> TrainingRun:
    run = get_run(session, run_id=run_id)
    if run is None:
        raise RecordNotFound(f"training run {run_id} does not exist")
    return run


def _require_status(run: TrainingRun, allowed: tuple[RunStatus, ...], doing: str) -> None:
    if run.status not in allowed:
        raise InvalidTransition(
            f"cannot {doing} training run {run.id}: it is {run.status.value}, expected {' or '.join(s.value for s in allowed)}"
        )


def list_runs(
    session: Session,
    *,
    status: RunStatus | str | None = None,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> Page[TrainingRun]:
    """Runs, newest first."""
    stmt = select(TrainingRun)
    if status is not None:
        stmt = stmt.where(TrainingRun.status == coerce_enum(RunStatus, status))
    return paginate(session, stmt, TrainingRun.id, kind="training_runs", order="desc", limit=limit, cursor=cursor)


def start_run(session: Session, *, run_id: int, edits_total: int | None = None) -> TrainingRun:
    """Queued -> running; stamps started_at and the first heartbeat.

    The UPDATE itself re-checks that the run is still queued, so of two processes starting the
    same queued run concurrently exactly one succeeds; the other gets InvalidTransition.
    """
    run = _require_run(session, run_id)
    _require_status(run, (RunStatus.QUEUED,), "start")
    now = utcnow()
    values: dict[str, object] = {"status": RunStatus.RUNNING, "started_at": now, "heartbeat_at": now}
    if edits_total is not None:
        values["edits_total"] = edits_total
    started = session.execute(
        update(TrainingRun)
        .where(TrainingRun.id == run.id, TrainingRun.status == RunStatus.QUEUED)
        .values(**values)
        .returning(TrainingRun.id)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    session.refresh(run)
    if started is None:
        _require_status(run, (RunStatus.QUEUED,), "start")  # raises: someone else started it
    return run


def update_run_progress(
    session: Session,
    *,
    run_id: int,
    edits_done: int | None = None,
    current_loss: float | None = None,
    steps_done: int | None = None,
    steps_planned: int | None = None,
    heartbeat: bool = True,
) -> TrainingRun:
    """Record progress of a running run; `heartbeat` stamps heartbeat_at (the run is alive)."""
    run = _require_run(session, run_id)
    _require_status(run, (RunStatus.RUNNING,), "update progress of")
    if edits_done is not None:
        run.edits_done = edits_done
    if steps_done is not None:
        run.steps_done = steps_done
    if steps_planned is not None:
        run.steps_planned = steps_planned
    if current_loss is not None:
        run.current_loss = current_loss
    if heartbeat:
        run.heartbeat_at = utcnow()
    session.flush()
    return run


def finish_run(
    session: Session,
    *,
    run_id: int,
    status: RunStatus | str,
    error: str | None = None,
    experts_created: int | None = None,
) -> TrainingRun:
    """Queued or running -> succeeded | failed | interrupted; stamps finished_at."""
    status = coerce_enum(RunStatus, status)
    if status not in FINAL_RUN_STATUSES:
        raise ValueError(f"a run cannot finish as {status.value!r}; one of {[s.value for s in FINAL_RUN_STATUSES]}")
    run = _require_run(session, run_id)
    _require_status(run, ACTIVE_RUN_STATUSES, "finish")
    now = utcnow()
    run.status = status
    run.finished_at = now
    run.heartbeat_at = now
    run.error = error
    if experts_created is not None:
        run.experts_created = experts_created
    session.flush()
    return run


def active_run(session: Session) -> TrainingRun | None:
    """The run in progress (running first, else the oldest queued), or None."""
    stmt = (
        select(TrainingRun)
        .where(TrainingRun.status.in_(ACTIVE_RUN_STATUSES))
        .order_by(case((TrainingRun.status == RunStatus.RUNNING, 0), else_=1), TrainingRun.id)
        .limit(1)
    )
    return session.scalars(stmt).first()


def is_second_active_run(exc: IntegrityError) -> bool:
    """The database refused a second queued/running run (the unique index of migration 0002),
    whichever process inserted the first one."""
    return ONE_ACTIVE_RUN_INDEX in str(getattr(exc, "orig", None) or exc)
