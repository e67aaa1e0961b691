"""The training worker: claims pending edits, plans batches, trains one expert per batch,
registers it and makes it live. `run_once()` is one run (blocking); `run_forever()` is the
schedule (an asyncio loop that trains in a thread, so the API keeps serving meanwhile)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from sqlalchemy import Connection, func, literal, select
from sqlalchemy.orm import Session, sessionmaker

from app import store
from app.config import Settings
from app.domain import EditStatus, RunStatus, RunTrigger
from app.services import training
from app.services.checks import SCHEDULER_ACTOR
from app.services.stack import LiveStack

if TYPE_CHECKING:
    from app.engine.engine import Engine, EngineEdit
    from app.metrics import Metrics

log = logging.getLogger(__name__)

PROGRESS_WRITE_INTERVAL_S = 2.0  # at most one progress write (and heartbeat) per this interval
STOP_TIMEOUT_S = 30.0  # how long shutdown waits for a run to notice the stop request
TRAINER_LOCK_CLASS = 0x1E0E  # first key of the PostgreSQL advisory lock that elects the trainer


class WorkerStopping(Exception):
    """Raised inside training when the process is shutting down."""


@dataclass
class _Tally:
    applied: int = 0
    failed: int = 0
    experts: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def done(self) -> int:
        return self.applied + self.failed


class TrainingWorker:
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
        self.state = "idle"  # idle | standby (another process trains) | training | stopped
        self._run_lock = threading.Lock()  # one run at a time in this process
        self._stop = threading.Event()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock_connection: Connection | None = None

    # --- one run -----------------------------------------------------------------------------
    def run_once(
        self,
        trigger: RunTrigger | str = RunTrigger.SCHEDULE,
        actor: str = SCHEDULER_ACTOR,
        run_id: int | None = None,
    ) -> int | None:
        """Train what is pending (or run queued run `run_id`); returns the run id, None if idle."""
        with self._run_lock:
            started = training.start_run(
                self.session_factory,
                settings=self.settings,
                trigger=RunTrigger(trigger),
                actor=actor,
                run_id=run_id,
            )
            if started is None:
                return None
            self.state = "training"
            try:
                self._train(started)
            finally:
                self.state = "idle"
            return started.run_id

    def _train(self, run: training.StartedRun) -> None:
        from app.engine.engine import EngineEdit

        clock = time.perf_counter()
        log.info("training run %s started (%s by %s): %d edits", run.run_id, run.trigger.value, run.actor, len(run.edits))
        tally = _Tally()
        try:
            edits = [EngineEdit(e.edit_id, e.prompt, e.target, e.rephrases, e.subject) for e in run.edits]
            edits = self._with_inferred_subjects(run, edits)
            batches = self.engine.plan(edits, batch_size=self.settings.edits_per_expert, planning=self.settings.planning) if edits else []
            log.info("run %s: %d batches of up to %d edits", run.run_id, len(batches), self.settings.edits_per_expert)
            for index, batch in enumerate(batches):
                self._check_stop()
                self._train_batch(run, index, len(batches), batch, tally)
        except WorkerStopping:
            log.warning("run %s interrupted by shutdown; its unfinished edits return to pending", run.run_id)
            training.interrupt_run(self.session_factory, run=run, reason="interrupted: the server is shutting down")
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
        training.finish_run(
            self.session_factory,
            run=run,
            status=status,
            error=error,
            payload={
                "experts_created": tally.experts,
                "edits_applied": tally.applied,
                "edits_failed": tally.failed,
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

    def _with_inferred_subjects(self, run: training.StartedRun, edits: list[EngineEdit]) -> list[EngineEdit]:
        """Edits without a subject get the one the model infers, recorded on the edit (with its
        audit event) before training uses it. A failure here fails nothing: it is logged and
        those edits train without a subject, routed by their wording alone."""
        if all(e.subject for e in edits):
            return edits
        try:
            inferred = self.engine.infer_subjects(edits)
            recorded = training.record_inferred_subjects(self.session_factory, run=run, subjects=inferred) if inferred else {}
        except Exception:
            log.exception("run %s: could not infer the subjects of its edits; they train without one", run.run_id)
            return edits
        if recorded:
            log.info("run %s: inferred subjects %s", run.run_id, recorded)
        return [replace(e, subject=recorded[e.edit_id]) if e.edit_id in recorded else e for e in edits]

    def _train_batch(self, run: training.StartedRun, index: int, count: int, batch, tally: _Tally) -> None:
        """Train, register and make live one expert; a training error fails only this batch."""
        ids = [e.edit_id for e in batch]
        training.mark_training(self.session_factory, edit_ids=ids)
        # Deterministic (the editor seeds its augmentation by name); run ids never repeat.
        name = f"expert-r{run.run_id}-b{index}"
        log.info("run %s batch %d/%d: training %s on edits %s", run.run_id, index + 1, count, name, ids)
        try:
            built = self.engine.build_expert(name, batch, progress=self._progress(run, tally.done))
        except WorkerStopping:
            raise
        except Exception as exc:
            log.exception("run %s batch %d failed", run.run_id, index + 1)
            message = f"training failed: {type(exc).__name__}: {exc}"
            tally.failed += len(ids)
            tally.errors.append(f"batch {index + 1}: {message}")
            training.fail_batch(self.session_factory, run=run, edit_ids=ids, error=message, edits_done=tally.done)
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
        training.register_expert(
            self.session_factory,
            settings=self.settings,
            run=run,
            built=built,
            edits_done=tally.done + len(ids),
        )
        for new_id, old_id in built.superseded:
            log.info("run %s: edit %s supersedes edit %s", run.run_id, new_id, old_id)
        tally.applied += len(ids)
        tally.experts += 1
        self.stack.sync()  # the new expert goes live atomically, between requests

    def _fail_leftovers(self, run: training.StartedRun, message: str) -> None:
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
                training.fail_batch(
                    self.session_factory,
                    run=run,
                    edit_ids=leftover,
                    error=message,
                    edits_done=len(run.edits),
                )
        except Exception:
            log.exception("run %s: could not mark its unfinished edits failed; recovery at the next start requeues them", run.run_id)

    def _progress(self, run: training.StartedRun, edits_done: int) -> Callable[[int, float], None]:
        """The build's progress hook: stops on shutdown, writes progress at most every 2 s."""
        last = [0.0]

        def progress(step: int, loss: float) -> None:
            self._check_stop()
            now = time.monotonic()
            if now - last[0] >= PROGRESS_WRITE_INTERVAL_S:
                last[0] = now
                training.record_progress(self.session_factory, run_id=run.run_id, edits_done=edits_done, current_loss=loss)
                log.info("run %s: step %d, loss %.4f", run.run_id, step, loss)

        return progress

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise WorkerStopping

    # --- the schedule ---------------------------------------------------------------------------
    def wake(self) -> None:
        """Ask the loop to look for queued runs now (safe from any thread)."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def stop(self) -> None:
        """Ask the loop, and a run in progress, to stop (a run is interrupted cleanly)."""
        self._stop.set()
        self.wake()

    def acquire_trainer_role(self) -> bool:
        """PostgreSQL: hold an advisory lock (per schema) so one process trains; SQLite: always."""
        bind = self.session_factory.kw.get("bind")
        if bind is None or bind.dialect.name != "postgresql":
            return True
        if self._lock_connection is not None:
            try:  # the lock lives as long as this database session does
                self._lock_connection.execute(select(literal(1)))
                self._lock_connection.commit()
                return True
            except Exception:
                log.warning("lost the database session that held the trainer lock; re-electing")
                self.release_trainer_role()
        connection = bind.connect()
        try:
            key = func.hashtext(func.current_schema())
            lock = func.pg_try_advisory_lock(literal(TRAINER_LOCK_CLASS), key)
            got = connection.execute(select(lock)).scalar()
            connection.commit()  # the lock is session-level: it outlives the transaction
        except Exception:
            connection.close()
            raise
        if not got:
            connection.close()
            return False
        self._lock_connection = connection
        return True

    def release_trainer_role(self) -> None:
        if self._lock_connection is not None:
            # Really close the database session (not just return it to the pool): that
            # releases the lock even if the connection is in a bad state.
            self._lock_connection.invalidate()
            self._lock_connection.close()
            self._lock_connection = None

    def _tick(self, scheduled: bool) -> None:
        """Run queued runs (manual triggers, possibly from other processes), then the schedule."""
        while not self._stop.is_set():
            with self.session_factory() as session:
                queued = store.list_runs(session, status=RunStatus.QUEUED, limit=store.MAX_LIMIT).items
            if not queued:
                break
            run = min(queued, key=lambda r: r.id)
            self.run_once(run.trigger, run.actor, run_id=run.id)
        if scheduled and not self._stop.is_set():
            with self.session_factory() as session:
                pending = store.count_edits(session, status=EditStatus.PENDING)
            if pending >= self.settings.worker_min_pending:
                self.run_once(RunTrigger.SCHEDULE, SCHEDULER_ACTOR)

    async def run_forever(self, *, recovered: bool = False) -> None:
        """Every worker_interval_s train if enough edits are pending; queued runs at once."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        poll = min(self.settings.worker_poll_interval_s, self.settings.worker_interval_s)
        next_schedule = time.monotonic() + self.settings.worker_interval_s
        log.info(
            "training worker: every %.0f s when >= %d edits are pending (batches of %d, at most %d per run)",
            self.settings.worker_interval_s,
            self.settings.worker_min_pending,
            self.settings.edits_per_expert,
            self.settings.worker_max_batch,
        )
        try:
            while not self._stop.is_set():
                if not await asyncio.to_thread(self.acquire_trainer_role):
                    if self.state != "standby":
                        log.info("another process holds the trainer lock; standing by")
                    self.state = "standby"
                    await self._sleep(poll)
                    continue
                if not recovered:
                    # We just became the trainer: a previous one may have died mid-run.
                    await asyncio.to_thread(training.recover, self.session_factory)
                    await asyncio.to_thread(self.stack.sync)
                    recovered = True
                    self.state = "idle"
                scheduled = time.monotonic() >= next_schedule
                if scheduled:
                    next_schedule = time.monotonic() + self.settings.worker_interval_s
                try:
                    await asyncio.to_thread(self._tick, scheduled)
                except Exception:
                    log.exception("training worker tick failed; retrying at the next one")
                await self._sleep(max(0.0, min(poll, next_schedule - time.monotonic())))
        finally:
            self.state = "stopped"
            await asyncio.to_thread(self.release_trainer_role)

    async def _sleep(self, seconds: float) -> None:
        assert self._wake is not None
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        except TimeoutError:
            pass
        self._wake.clear()
