"""Executing training runs: `Trainer.run_once()` claims pending edits, plans batches, trains one
expert per batch, registers it and makes it live.

Every change a run makes to SQL goes through one of the functions here, each ONE transaction that
also writes its audit events. When runs happen is the worker's (app/worker.py); what clients ask
about runs is `app.services.runs`'s.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app import store
from app.config import Settings
from app.domain import AuditAction, EditStatus, RunStatus, RunTrigger
from app.errors import Conflict
from app.lemoe.types import Edit
from app.services import retractions
from app.services.built_experts import add_live_expert, announce_live_expert
from app.services.checks import SCHEDULER_ACTOR, SYSTEM_ACTOR
from app.services.expert_files import abandon_built_expert
from app.services.runs import get_run
from app.services.stack import LiveStack

if TYPE_CHECKING:
    from app.engine.engine import BuiltExpert, Engine, ExpertCheck, InferredSubject
    from app.metrics import Metrics

log = logging.getLogger(__name__)

PROGRESS_WRITE_INTERVAL_S = 2.0  # at most one progress write (and heartbeat) per this interval

# requeue_interrupted(stale_before=EPOCH) touches no live run: it only returns to pending the
# in-flight edits whose run has already finished.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class RunStopped(Exception):
    """Raised inside training when the process is shutting down."""


@dataclass(frozen=True)
class StartedRun:
    run_id: int
    actor: str
    trigger: RunTrigger
    edits: tuple[Edit, ...]


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
            edits=tuple(Edit(e.id, e.prompt, e.target, tuple(e.rephrases or ()), e.subject) for e in claimed),
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


class BatchChanged(Exception):
    """Edits of a batch left `training` while it trained (a client cancelled them, or a replica's
    recovery requeued them): the expert is not registered; it is trained again without them."""

    def __init__(self, edit_ids: Sequence[int]) -> None:
        super().__init__(f"edits {list(edit_ids)} are no longer training")
        self.edit_ids = tuple(edit_ids)


def start_batch(session_factory: sessionmaker[Session], *, edit_ids: Sequence[int]) -> set[int]:
    """planned -> training for one batch, less the edits cancelled since the run claimed them
    (they are left out: never trained); returns the ids that train."""
    with session_factory() as session:
        started = store.move_planned_to_training(session, edit_ids=edit_ids)
        session.commit()
        return started


def require_still_training(session: Session, *, edit_ids: Sequence[int]) -> None:
    """Inside the transaction that registers a batch's expert: its edits are held in `training`
    until the commit, or BatchChanged names those that left it (the transaction rolls back)."""
    gone = sorted(set(edit_ids) - store.hold_in_status(session, edit_ids=edit_ids, status=EditStatus.TRAINING))
    if gone:
        session.rollback()
        raise BatchChanged(gone)


def record_progress(
    session_factory: sessionmaker[Session],
    *,
    run_id: int,
    edits_done: int | None = None,
    current_loss: float | None = None,
    steps_done: int | None = None,
    steps_planned: int | None = None,
) -> None:
    """Progress and a heartbeat (the run is alive); no audit event: it is not a change of state."""
    with session_factory() as session:
        store.update_run_progress(
            session,
            run_id=run_id,
            edits_done=edits_done,
            current_loss=current_loss,
            steps_done=steps_done,
            steps_planned=steps_planned,
        )
        session.commit()


def register_expert(
    session_factory: sessionmaker[Session],
    *,
    settings: Settings,
    run: StartedRun,
    built: BuiltExpert,
    edits_done: int,
    check: ExpertCheck | None = None,
) -> store.Expert:
    """The trained expert becomes an active row and its edits applied, all in one commit;
    BatchChanged (nothing written) when some of them were cancelled meanwhile.
    `check`: the figures of its check before going live (stored on it, and in its event)."""
    with session_factory() as session:
        require_still_training(session, edit_ids=built.edit_ids)
        expert = add_live_expert(session, settings=settings, built=built, check=check, training_run_id=run.run_id)
        store.set_edit_status(session, edit_ids=built.edit_ids, status=EditStatus.APPLIED, expert_id=expert.id)
        announce_live_expert(session, expert, built, actor=run.actor, training_run_id=run.run_id)
        common = {"actor": run.actor, "expert_id": expert.id, "training_run_id": run.run_id}
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


def check_shortfall(settings: Settings, check: ExpertCheck) -> str | None:
    """Why the expert must not go live (each figure below its minimum), or None."""
    problems = []
    if check.edit_rate < settings.check_min_edit_rate:
        problems.append(
            f"it answered {check.edits_answered} of its {check.edits} edits ({check.edit_rate:.2f} < "
            f"LEMOE_CHECK_MIN_EDIT_RATE {settings.check_min_edit_rate}; missed edit ids {check.missed_edit_ids})"
        )
    if check.locality_rate < settings.check_min_locality:
        problems.append(
            f"it changed {check.locality - check.locality_kept} of {check.locality} unrelated prompts' answers "
            f"({check.locality_rate:.2f} < LEMOE_CHECK_MIN_LOCALITY {settings.check_min_locality})"
        )
    if check.others_rate < settings.check_min_others_kept:
        problems.append(
            f"it changed the answers of live edits {check.changed_edit_ids} ({check.others_kept} of {check.others} kept, "
            f"{check.others_rate:.2f} < LEMOE_CHECK_MIN_OTHERS_KEPT {settings.check_min_others_kept})"
        )
    if not problems:
        return None
    return "the check before going live failed: " + "; ".join(problems)


def live_edits(session_factory: sessionmaker[Session], *, edit_ids: Sequence[int]) -> list[Edit]:
    """The edits of `edit_ids` that are applied now, in that order (the others' answers the
    check keeps)."""
    if not edit_ids:
        return []
    with session_factory() as session:
        try:
            rows = {e.id: e for e in store.edits_by_ids(session, edit_ids=edit_ids)}
        except store.RecordNotFound:  # an expert of another database's ids: check none of them
            rows = {}
    return [
        Edit(e.id, e.prompt, e.target, tuple(e.rephrases or ()), e.subject)
        for i in edit_ids
        if (e := rows.get(i)) is not None and e.status is EditStatus.APPLIED
    ]


def reject_expert(
    session_factory: sessionmaker[Session],
    *,
    run: StartedRun,
    built: BuiltExpert,
    check: ExpertCheck | None,
    reason: str,
    edits_done: int,
) -> None:
    """The expert failed its check (or the check could not run): it never goes live, and its
    edits fail with the reason; each edit.failed event carries the expert's name and figures."""
    figures = None if check is None else check.to_dict()
    fail_batch(
        session_factory,
        run=run,
        edit_ids=built.edit_ids,
        error=reason,
        edits_done=edits_done,
        details={"expert": built.name, "check": figures},
        current_loss=built.final_loss,
    )


def _in_flight(session: Session, edit_ids: Sequence[int]) -> set[int]:
    """Those of `edit_ids` still planned or training (locked): one a client cancelled meanwhile
    stays cancelled, never failed."""
    held = store.hold_in_status(session, edit_ids=edit_ids, status=EditStatus.TRAINING)
    return held | store.hold_in_status(session, edit_ids=edit_ids, status=EditStatus.PLANNED)


def fail_batch(
    session_factory: sessionmaker[Session],
    *,
    run: StartedRun,
    edit_ids: Sequence[int],
    error: str,
    edits_done: int,
    details: dict[str, Any] | None = None,
    current_loss: float | None = None,
) -> None:
    """The edits of `edit_ids` still in flight fail with `error`, each with an edit.failed event
    (its payload: the error and `details`), in one commit with the run's progress."""
    with session_factory() as session:
        edit_ids = sorted(_in_flight(session, edit_ids))
        store.set_edit_status(session, edit_ids=edit_ids, status=EditStatus.FAILED, error=error)
        for edit_id in edit_ids:
            store.append_audit(
                session,
                actor=run.actor,
                action=AuditAction.EDIT_FAILED,
                edit_id=edit_id,
                training_run_id=run.run_id,
                payload={"error": error, **(details or {})},
            )
        store.update_run_progress(session, run_id=run.run_id, edits_done=edits_done, current_loss=current_loss)
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


# --- executing a run ------------------------------------------------------------------------


@dataclass
class _Tally:
    applied: int = 0
    failed: int = 0
    cancelled: int = 0  # left out of their batch: cancelled by a client after the run claimed them
    experts: int = 0
    errors: list[str] = field(default_factory=list)
    steps: int = 0  # training steps of the batches done
    steps_planned: int = 0  # those, plus the step limit of each batch not done yet

    @property
    def done(self) -> int:
        return self.applied + self.failed + self.cancelled


class Trainer:
    """Executes training runs in this process, one at a time (`run_once`, blocking); `stop`
    interrupts a run in progress cleanly (its unfinished edits return to pending)."""

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        engine: Engine,
        *,
        stack: LiveStack | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.engine = engine
        self.stack = stack or LiveStack(engine, session_factory, settings)
        self.metrics = metrics
        self.training = False
        self.stopping = threading.Event()
        self._run_lock = threading.Lock()  # one run at a time in this process

    def run_once(
        self,
        trigger: RunTrigger | str = RunTrigger.SCHEDULE,
        actor: str = SCHEDULER_ACTOR,
        run_id: int | None = None,
    ) -> int | None:
        """Train what is pending (or run queued run `run_id`); returns the run id, None if idle."""
        with self._run_lock:
            started = start_run(
                self.session_factory,
                settings=self.settings,
                trigger=RunTrigger(trigger),
                actor=actor,
                run_id=run_id,
            )
            if started is None:
                return None
            self.training = True
            try:
                self._train(started)
            finally:
                self.training = False
            return started.run_id

    def _train(self, run: StartedRun) -> None:
        clock = time.perf_counter()
        log.info("training run %s started (%s by %s): %d edits", run.run_id, run.trigger.value, run.actor, len(run.edits))
        tally = _Tally()
        try:
            edits = self._with_inferred_subjects(run, list(run.edits))
            batches = self.engine.plan(edits, batch_size=self.settings.edits_per_expert, planning=self.settings.planning) if edits else []
            log.info("run %s: %d batches of up to %d edits", run.run_id, len(batches), self.settings.edits_per_expert)
            tally.steps_planned = len(batches) * self.engine.max_steps
            record_progress(self.session_factory, run_id=run.run_id, steps_done=0, steps_planned=tally.steps_planned)
            for index, batch in enumerate(batches):
                self._check_stop()
                self._train_batch(run, index, len(batches), batch, tally)
        except RunStopped:
            log.warning("run %s interrupted by shutdown; its unfinished edits return to pending", run.run_id)
            interrupt_run(self.session_factory, run=run, reason="interrupted: the server is shutting down")
            if self.metrics is not None:
                self.metrics.observe_run(RunStatus.INTERRUPTED.value, time.perf_counter() - clock)
            return
        except Exception as exc:
            # Planning, the database or the stack failed: the rest of the run cannot go on.
            log.exception("run %s failed", run.run_id)
            tally.errors.append(f"{type(exc).__name__}: {exc}")
            self._fail_leftovers(run, f"run failed: {type(exc).__name__}: {exc}")
        status = RunStatus.FAILED if tally.errors else RunStatus.SUCCEEDED
        error = f"{len(tally.errors)} problem(s): " + "; ".join(tally.errors) if tally.errors else None
        seconds = time.perf_counter() - clock
        finish_run(
            self.session_factory,
            run=run,
            status=status,
            error=error,
            payload={
                "experts_created": tally.experts,
                "edits_applied": tally.applied,
                "edits_failed": tally.failed,
                "edits_cancelled": tally.cancelled,
                "seconds": round(seconds, 3),
            },
        )
        if self.metrics is not None:
            self.metrics.observe_run(status.value, seconds)
        log.info(
            "training run %s %s in %.1f s: %d experts, %d edits applied, %d failed",
            run.run_id,
            status.value,
            seconds,
            tally.experts,
            tally.applied,
            tally.failed,
        )

    def _with_inferred_subjects(self, run: StartedRun, edits: list[Edit]) -> list[Edit]:
        """Edits without a subject get the one the model infers, recorded on the edit (with its
        audit event) before training uses it. A failure here fails nothing: it is logged and
        those edits train without a subject, routed by their wording alone."""
        if all(e.subject for e in edits):
            return edits
        try:
            inferred = self.engine.infer_subjects(edits)
            recorded = record_inferred_subjects(self.session_factory, run=run, subjects=inferred) if inferred else {}
        except Exception:
            log.exception("run %s: could not infer the subjects of its edits; they train without one", run.run_id)
            return edits
        if recorded:
            log.info("run %s: inferred subjects %s", run.run_id, recorded)
        return [replace(e, subject=recorded[e.edit_id]) if e.edit_id in recorded else e for e in edits]

    def _train_batch(self, run: StartedRun, index: int, count: int, batch, tally: _Tally) -> None:
        """Train, register and make live one expert; a training error fails only this batch.
        Edits cancelled since the run claimed them are left out, never trained."""
        started = start_batch(self.session_factory, edit_ids=[e.edit_id for e in batch])
        batch = self._without_cancelled(run, batch, started, tally)
        if batch:
            self._train_started_batch(run, index, count, batch, tally)

    def _train_started_batch(self, run: StartedRun, index: int, count: int, batch: list[Edit], tally: _Tally) -> None:
        """The batch's edits are training: build its expert, register it, make it live. An edit
        cancelled meanwhile (BatchChanged at registration) makes it train again without it:
        an expert never holds, so never serves, a cancelled edit's anchors."""
        ids = [e.edit_id for e in batch]
        # Deterministic (the editor seeds its augmentation by name); run ids never repeat.
        name = f"expert-r{run.run_id}-b{index}"
        log.info("run %s batch %d/%d: training %s on edits %s", run.run_id, index + 1, count, name, ids)
        try:
            built = self.engine.build_expert(name, batch, progress=self._progress(run, tally.done, tally))
        except RunStopped:
            raise
        except Exception as exc:
            log.exception("run %s batch %d failed", run.run_id, index + 1)
            message = f"training failed: {type(exc).__name__}: {exc}"
            tally.failed += len(ids)
            tally.errors.append(f"batch {index + 1}: {message}")
            fail_batch(self.session_factory, run=run, edit_ids=ids, error=message, edits_done=tally.done)
            self._batch_steps(run, tally, steps=self.engine.max_steps)
            return
        log.info(
            "run %s batch %d: %s trained in %d steps (loss %.4f, %.1f s)",
            run.run_id,
            index + 1,
            name,
            built.steps,
            built.final_loss,
            built.seconds,
        )
        self._batch_steps(run, tally, steps=built.steps)
        try:
            live = self._go_live(run, index, built, batch, tally)
        except BatchChanged as changed:
            self._abandon(built)  # a retrain writes its folder afresh
            batch = self._without_cancelled(run, batch, set(ids) - set(changed.edit_ids), tally)
            if batch:
                self._train_started_batch(run, index, count, batch, tally)
            return
        except BaseException:
            self._abandon(built)
            raise
        if not live:
            self._abandon(built)

    def _go_live(self, run: StartedRun, index: int, built: BuiltExpert, batch: list[Edit], tally: _Tally) -> bool:
        """Check the built expert, then register it and make it live (True), or reject it: its
        edits fail with the shortfall (False). BatchChanged: an edit left the batch meanwhile."""
        ids = built.edit_ids
        check, shortfall = self._check_before_live(f"run {run.run_id}", built, batch)
        if shortfall is not None:
            log.warning("run %s batch %d: %s does not go live: %s", run.run_id, index + 1, built.name, shortfall)
            tally.failed += len(ids)
            tally.errors.append(f"batch {index + 1}: {shortfall}")
            reject_expert(self.session_factory, run=run, built=built, check=check, reason=shortfall, edits_done=tally.done)
            return False
        register_expert(
            self.session_factory,
            settings=self.settings,
            run=run,
            built=built,
            edits_done=tally.done + len(ids),
            check=check,
        )
        for new_id, old_id in built.superseded:
            log.info("run %s: edit %s supersedes edit %s", run.run_id, new_id, old_id)
        tally.applied += len(ids)
        tally.experts += 1
        self.stack.sync()  # the new expert goes live atomically, between requests
        return True

    def _abandon(self, built: BuiltExpert) -> None:
        abandon_built_expert(self.session_factory, engine=self.engine, built=built)

    def _without_cancelled(self, run: StartedRun, batch: list[Edit], still: set[int], tally: _Tally) -> list[Edit]:
        """`batch` less the edits not in `still` (cancelled by a client since the run claimed them)."""
        dropped = [e.edit_id for e in batch if e.edit_id not in still]
        if dropped:
            log.info("run %s: edits %s were cancelled (or requeued); they are left out of their batch", run.run_id, dropped)
            tally.cancelled += len(dropped)
            record_progress(self.session_factory, run_id=run.run_id, edits_done=tally.done)
        return [e for e in batch if e.edit_id in still]

    def retract_pending(self) -> int:
        """Carry out the retractions clients asked for (DELETE on an applied edit), one expert
        at a time, between runs; returns how many experts were replaced or retired."""
        pending = retractions.pending_retractions(self.session_factory)
        if not pending:
            return 0
        done = 0
        with self._run_lock:
            self.training = True
            try:
                for expert_id in pending:
                    if self.stopping.is_set():
                        break
                    done += retractions.retract_from_expert(
                        self.session_factory,
                        settings=self.settings,
                        engine=self.engine,
                        stack=self.stack,
                        expert_id=expert_id,
                        stopping=self.stopping,
                        check=lambda built, kept, old: self._check_before_live("retraction", built, kept, replacing={old}),
                    )
            finally:
                self.training = False
        return done

    def _check_before_live(
        self, who: str, built: BuiltExpert, batch: Sequence[Edit], *, replacing: Collection[str] = ()
    ) -> tuple[ExpertCheck | None, str | None]:
        """The expert's check figures, and why it must not go live (None: it may); `who` names
        what made it in the log ("run 7", "retraction"). Off
        (LEMOE_CHECK_ENABLED=false): no figures, it goes live. A check that cannot run keeps it
        out: nothing unmeasured serves. `replacing`: live experts it takes the place of (left out
        of the stack with it, and of the live edits whose answers it must keep)."""
        if not self.settings.check_enabled:
            return None, None
        try:
            nearest = self.engine.nearest_live_edits(built, limit=self.settings.check_others, without=replacing)
            others = live_edits(self.session_factory, edit_ids=nearest)
            check = self.engine.check_expert(built, batch, others, without=replacing)
        except RunStopped:
            raise
        except Exception as exc:
            log.exception("%s: the check of %s could not run", who, built.name)
            return None, f"the check before going live could not run: {type(exc).__name__}: {exc}"
        log.info(
            "%s: %s check: edits %d/%d, locality %d/%d, live edits kept %d/%d (%.2f s, training %.2f s)",
            who,
            built.name,
            check.edits_answered,
            check.edits,
            check.locality_kept,
            check.locality,
            check.others_kept,
            check.others,
            check.seconds,
            built.seconds,
        )
        return check, check_shortfall(self.settings, check)

    def _batch_steps(self, run: StartedRun, tally: _Tally, *, steps: int) -> None:
        """A batch is trained in `steps` (of its limit): the run's steps done and planned."""
        tally.steps += steps
        tally.steps_planned -= self.engine.max_steps - steps
        record_progress(self.session_factory, run_id=run.run_id, steps_done=tally.steps, steps_planned=tally.steps_planned)

    def _fail_leftovers(self, run: StartedRun, message: str) -> None:
        """Edits of the run not yet applied or failed are marked failed (best effort)."""
        in_flight = (EditStatus.PLANNED, EditStatus.TRAINING)
        try:
            leftover: list[int] = []
            cursor = None
            with self.session_factory() as session:
                while True:
                    page = store.list_edits(session, training_run_id=run.run_id, limit=store.MAX_LIMIT, cursor=cursor)
                    leftover += [e.id for e in page.items if e.status in in_flight]
                    if page.next_cursor is None:
                        break
                    cursor = page.next_cursor
            if leftover:
                fail_batch(
                    self.session_factory,
                    run=run,
                    edit_ids=leftover,
                    error=message,
                    edits_done=len(run.edits),
                )
        except Exception:
            log.exception("run %s: could not mark its unfinished edits failed; recovery at the next start requeues them", run.run_id)

    def _progress(self, run: StartedRun, edits_done: int, tally: _Tally | None = None) -> Callable[[int, float], None]:
        """The build's progress hook: stops on shutdown, writes progress (with the run's steps
        done when given its `tally`) at most every 2 s."""
        last = [0.0]

        def progress(step: int, loss: float) -> None:
            self._check_stop()
            now = time.monotonic()
            if now - last[0] >= PROGRESS_WRITE_INTERVAL_S:
                last[0] = now
                steps_done = None if tally is None else tally.steps + step
                record_progress(self.session_factory, run_id=run.run_id, edits_done=edits_done, current_loss=loss, steps_done=steps_done)
                log.info("run %s: step %d, loss %.4f", run.run_id, step, loss)

        return progress

    def _check_stop(self) -> None:
        if self.stopping.is_set():
            raise RunStopped


def next_queued_run(session_factory: sessionmaker[Session]) -> store.TrainingRun | None:
    """The oldest queued run (a manual trigger, possibly from another process), if any."""
    with session_factory() as session:
        queued = store.list_runs(session, status=RunStatus.QUEUED, limit=store.MAX_LIMIT).items
        return min(queued, key=lambda r: r.id) if queued else None


def count_pending(session_factory: sessionmaker[Session]) -> int:
    with session_factory() as session:
        return store.count_edits(session, status=EditStatus.PENDING)
