"""Training runs: the manual trigger, reading runs, and the worker's transactional steps.

The worker (app/worker.py) drives the engine; every change it makes to SQL goes through one of
the functions here, each ONE transaction that also writes its audit events.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app import store
from app.config import Settings
from app.domain import AuditAction, EditStatus, ExpertStatus, RunStatus, RunTrigger
from app.errors import Conflict, NothingToTrain, RunAlreadyActive, RunNotFound
from app.services.checks import SYSTEM_ACTOR, store_errors
from app.services.stack import stored_path

if TYPE_CHECKING:
    from app.engine.engine import BuiltExpert, InferredSubject

# requeue_interrupted(stale_before=EPOCH) touches no live run: it only returns to pending the
# in-flight edits whose run has already finished.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A run created concurrently elsewhere finished between our insert and our look-up: try again.
CREATE_ATTEMPTS = 3


# --- the API side ---------------------------------------------------------------------------


def trigger_run(session: Session, *, settings: Settings, actor: str) -> store.TrainingRun:
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


# --- the worker side ------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimedEdit:
    edit_id: int
    prompt: str
    target: str
    rephrases: tuple[str, ...]
    subject: str | None = None


@dataclass(frozen=True)
class StartedRun:
    run_id: int
    actor: str
    trigger: RunTrigger
    edits: tuple[ClaimedEdit, ...]


def start_run(
    session_factory: sessionmaker[Session],
    *,
    settings: Settings,
    trigger: RunTrigger,
    actor: str,
    run_id: int | None = None,
) -> StartedRun | None:
    """Start run `run_id` (queued), or adopt the queued one / create one when None, and claim
    up to worker_max_batch pending edits (-> planned). None: nothing to do (no pending edits
    and no queued run, or another run is already running)."""
    with session_factory() as session:
        if run_id is None:
            active = store.active_run(session)
            if active is not None and active.status is RunStatus.RUNNING:
                return None
            if active is not None:
                run = active
            else:
                pending = store.count_edits(session, status=EditStatus.PENDING)
                if pending == 0:
                    return None
                try:
                    run = store.create_run(session, trigger=trigger, actor=actor, edits_total=pending)
                except IntegrityError as exc:
                    # Another process created a run meanwhile (the database allows one): its
                    # trainer runs it; this one has nothing to do.
                    session.rollback()
                    if store.is_second_active_run(exc):
                        return None
                    raise
                store.append_audit(
                    session,
                    actor=actor,
                    action=AuditAction.RUN_CREATED,
                    training_run_id=run.id,
                    payload={"trigger": RunTrigger(trigger).value, "pending": pending},
                )
        else:
            run = get_run(session, run_id=run_id)
            if run.status is not RunStatus.QUEUED:
                raise Conflict(f"training run {run_id} is {run.status.value}, not queued")
        claimed = store.claim_pending_edits(session, run_id=run.id, limit=settings.worker_max_batch)
        try:
            store.start_run(session, run_id=run.id, edits_total=len(claimed))
        except store.InvalidTransition:
            # Another process started this queued run first (its claims stand, ours roll back).
            session.rollback()
            if run_id is not None:
                raise Conflict(f"training run {run_id} is no longer queued") from None
            return None
        store.append_audit(
            session,
            actor=run.actor,
            action=AuditAction.RUN_STARTED,
            training_run_id=run.id,
            payload={"edit_ids": [e.id for e in claimed]},
        )
        for edit in claimed:
            store.append_audit(
                session,
                actor=run.actor,
                action=AuditAction.EDIT_PLANNED,
                edit_id=edit.id,
                training_run_id=run.id,
            )
        session.commit()
        return StartedRun(
            run_id=run.id,
            actor=run.actor,
            trigger=run.trigger,
            edits=tuple(ClaimedEdit(e.id, e.prompt, e.target, tuple(e.rephrases or ()), e.subject) for e in claimed),
        )


def record_inferred_subjects(
    session_factory: sessionmaker[Session],
    *,
    run: StartedRun,
    subjects: Mapping[int, InferredSubject],
) -> dict[int, str]:
    """The subjects the model inferred for edits of `run` that named none, each with an
    edit.subject_inferred event (subject and method), in one commit. An edit that has a subject
    by now keeps it and is left out; returns edit id -> the subject recorded."""
    recorded: dict[int, str] = {}
    with session_factory() as session:
        for edit_id, inferred in sorted(subjects.items()):
            edit = store.set_inferred_subject(session, edit_id=edit_id, subject=inferred.text)
            if edit is None:
                continue
            store.append_audit(
                session,
                actor=run.actor,
                action=AuditAction.EDIT_SUBJECT_INFERRED,
                edit_id=edit_id,
                training_run_id=run.run_id,
                payload={"subject": inferred.text, "method": inferred.method},
            )
            recorded[edit_id] = inferred.text
        session.commit()
    return recorded


def mark_training(session_factory: sessionmaker[Session], *, edit_ids: Sequence[int]) -> None:
    """planned -> training for one batch (the run's started event already records the claim)."""
    with session_factory() as session:
        store.set_edit_status(session, edit_ids=edit_ids, status=EditStatus.TRAINING)
        session.commit()


def record_progress(
    session_factory: sessionmaker[Session],
    *,
    run_id: int,
    edits_done: int | None = None,
    current_loss: float | None = None,
) -> None:
    """Progress and a heartbeat (the run is alive); no audit event: it is not a change of state."""
    with session_factory() as session:
        store.update_run_progress(session, run_id=run_id, edits_done=edits_done, current_loss=current_loss)
        session.commit()


def register_expert(
    session_factory: sessionmaker[Session],
    *,
    settings: Settings,
    run: StartedRun,
    built: BuiltExpert,
    edits_done: int,
) -> store.Expert:
    """The trained expert becomes an active row and its edits applied, all in one commit."""
    with session_factory() as session:
        expert = store.add_expert(
            session,
            name=built.name,
            path=stored_path(settings, built.path),
            sha256=built.sha256,
            edit_count=len(built.edit_ids),
            training_run_id=run.run_id,
            final_loss=built.final_loss,
            steps=built.steps,
            metrics={"train_seconds": round(built.seconds, 3)},
            status=ExpertStatus.ACTIVE,
        )
        store.set_edit_status(session, edit_ids=built.edit_ids, status=EditStatus.APPLIED, expert_id=expert.id)
        common = {"actor": run.actor, "expert_id": expert.id, "training_run_id": run.run_id}
        store.append_audit(
            session,
            action=AuditAction.EXPERT_REGISTERED,
            payload={
                "name": expert.name,
                "sha256": expert.sha256,
                "edit_ids": list(built.edit_ids),
                "steps": built.steps,
                "final_loss": built.final_loss,
                "train_seconds": round(built.seconds, 3),
            },
            **common,
        )
        store.append_audit(session, action=AuditAction.EXPERT_ACTIVATED, payload={"name": expert.name}, **common)
        for edit_id in built.edit_ids:
            store.append_audit(session, action=AuditAction.EDIT_APPLIED, edit_id=edit_id, **common)
        for new_id, old_id in built.superseded:
            store.append_audit(
                session,
                action=AuditAction.EDIT_SUPERSEDED,
                edit_id=old_id,
                payload={"by_edit_id": new_id, "expert": expert.name},
                **common,
            )
        db_run = get_run(session, run_id=run.run_id)
        db_run.experts_created += 1
        store.update_run_progress(session, run_id=run.run_id, edits_done=edits_done, current_loss=built.final_loss)
        session.commit()
        return expert


def fail_batch(
    session_factory: sessionmaker[Session],
    *,
    run: StartedRun,
    edit_ids: Sequence[int],
    error: str,
    edits_done: int,
) -> None:
    with session_factory() as session:
        store.set_edit_status(session, edit_ids=edit_ids, status=EditStatus.FAILED, error=error)
        for edit_id in edit_ids:
            store.append_audit(
                session,
                actor=run.actor,
                action=AuditAction.EDIT_FAILED,
                edit_id=edit_id,
                training_run_id=run.run_id,
                payload={"error": error},
            )
        store.update_run_progress(session, run_id=run.run_id, edits_done=edits_done)
        session.commit()


def finish_run(
    session_factory: sessionmaker[Session],
    *,
    run: StartedRun,
    status: RunStatus,
    error: str | None = None,
    payload: dict[str, Any] | None = None,
) -> store.TrainingRun:
    """succeeded | failed, with training_run.finished / training_run.failed."""
    with session_factory() as session:
        db_run = store.finish_run(session, run_id=run.run_id, status=status, error=error)
        store.append_audit(
            session,
            actor=run.actor,
            action=AuditAction.RUN_FINISHED if status is RunStatus.SUCCEEDED else AuditAction.RUN_FAILED,
            training_run_id=run.run_id,
            payload={**(payload or {}), **({"error": error} if error else {})},
        )
        session.commit()
        return db_run


def interrupt_run(session_factory: sessionmaker[Session], *, run: StartedRun, reason: str) -> store.RecoveryReport:
    """The process is stopping mid-run: the run ends interrupted and its unfinished edits go
    back to pending (edit.requeued), for the next run."""
    with session_factory() as session:
        store.finish_run(session, run_id=run.run_id, status=RunStatus.INTERRUPTED, error=reason)
        report = store.requeue_interrupted(session, stale_before=EPOCH)
        report = store.RecoveryReport(requeued_edits=report.requeued_edits, interrupted_run_ids=(run.run_id,))
        _audit_recovery(session, report, actor=run.actor, reason=reason)
        session.commit()
        return report


def recover(session_factory: sessionmaker[Session]) -> store.RecoveryReport:
    """At start-up of the trainer: runs a dead process left queued/running become interrupted
    and their claimed edits return to pending, with one audit event per change."""
    with session_factory() as session:
        report = store.requeue_interrupted(session)
        for run_id in report.interrupted_run_ids:
            get_run(session, run_id=run_id).error = "interrupted: the server stopped during the run"
        _audit_recovery(session, report, actor=SYSTEM_ACTOR, reason="the server stopped during the run")
        session.commit()
        return report


def _audit_recovery(session: Session, report: store.RecoveryReport, *, actor: str, reason: str) -> None:
    for run_id in report.interrupted_run_ids:
        store.append_audit(
            session,
            actor=actor,
            action=AuditAction.RUN_INTERRUPTED,
            training_run_id=run_id,
            payload={"reason": reason},
        )
    for edit in report.requeued_edits:
        store.append_audit(
            session,
            actor=actor,
            action=AuditAction.EDIT_REQUEUED,
            edit_id=edit.edit_id,
            training_run_id=edit.training_run_id,
            payload={"previous_status": edit.previous_status.value},
        )
