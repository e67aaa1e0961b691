"""The training schedule: when to ask the training service for a run. `run_forever()` is an
asyncio loop that elects this process trainer (the store's trainer lock), then runs queued runs at
once (after any retraction clients asked for) and a scheduled one every worker_interval_s when enough edits are pending, each in a thread
(`app.services.training.Trainer` executes it) so the API keeps serving meanwhile."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from app import store
from app.config import Settings
from app.domain import RunTrigger
from app.services import expert_files, training
from app.services.checks import SCHEDULER_ACTOR
from app.services.stack import LiveStack

if TYPE_CHECKING:
    from app.engine.engine import Engine
    from app.metrics import Metrics

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 30.0  # how long shutdown waits for a run to notice the stop request


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
        self.session_factory = session_factory
        self.trainer = training.Trainer(settings, session_factory, engine, stack=stack, metrics=metrics)
        self.trainer_lock = store.TrainerLock(session_factory.kw.get("bind"))
        self._state = "idle"  # idle | standby (another process trains) | stopped; "training" during a run
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def settings(self) -> Settings:
        return self.trainer.settings

    @settings.setter
    def settings(self, settings: Settings) -> None:  # one value for the schedule and the runs
        self.trainer.settings = settings

    @property
    def engine(self) -> Engine:
        return self.trainer.engine

    @property
    def stack(self) -> LiveStack:
        return self.trainer.stack

    @property
    def state(self) -> str:
        return "training" if self.trainer.training else self._state

    def run_once(
        self,
        trigger: RunTrigger | str = RunTrigger.SCHEDULE,
        actor: str = SCHEDULER_ACTOR,
        run_id: int | None = None,
    ) -> int | None:
        """One run now (blocking; tests call it): the training service executes it."""
        return self.trainer.run_once(trigger, actor, run_id)

    # --- the schedule ---------------------------------------------------------------------------
    def wake(self) -> None:
        """Ask the loop to look for queued runs now (safe from any thread)."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def stop(self) -> None:
        """Ask the loop, and a run in progress, to stop (a run is interrupted cleanly)."""
        self.trainer.stopping.set()
        self.wake()

    def acquire_trainer_role(self) -> bool:
        """Take (or confirm) the store's trainer lock: one process of a deployment trains."""
        return self.trainer_lock.acquire()

    def release_trainer_role(self) -> None:
        self.trainer_lock.release()

    def prune_orphaned_folders(self) -> None:
        """Once this process is the trainer: remove the expert folders a dead one left that no
        row names (app.services.expert_files). A failure is logged; it never stops the worker."""
        try:
            removed = expert_files.prune_orphaned_folders(self.session_factory, settings=self.settings)
        except Exception:
            log.warning("could not prune orphaned expert folders; `lemoe experts prune` retries", exc_info=True)
            return
        if removed:
            log.warning("removed %d orphaned expert folders (no expert names them): %s", len(removed), [f.path for f in removed])

    def _tick(self, scheduled: bool) -> None:
        """Carry out requested retractions, run queued runs (manual triggers, possibly from
        other processes), then the schedule."""
        self.trainer.retract_pending()
        while not self.trainer.stopping.is_set():
            run = training.next_queued_run(self.session_factory)
            if run is None:
                break
            self.run_once(run.trigger, run.actor, run_id=run.id)
        if scheduled and not self.trainer.stopping.is_set():
            if training.count_pending(self.session_factory) >= self.settings.worker_min_pending:
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
            while not self.trainer.stopping.is_set():
                if not await asyncio.to_thread(self.acquire_trainer_role):
                    if self._state != "standby":
                        log.info("another process holds the trainer lock; standing by")
                    self._state = "standby"
                    await self._sleep(poll)
                    continue
                if not recovered:
                    # We just became the trainer: a previous one may have died mid-run.
                    await asyncio.to_thread(training.recover, self.session_factory)
                    await asyncio.to_thread(self.prune_orphaned_folders)
                    await asyncio.to_thread(self.stack.sync)
                    recovered = True
                    self._state = "idle"
                scheduled = time.monotonic() >= next_schedule
                if scheduled:
                    next_schedule = time.monotonic() + self.settings.worker_interval_s
                try:
                    await asyncio.to_thread(self._tick, scheduled)
                except Exception:
                    log.exception("training worker tick failed; retrying at the next one")
                await self._sleep(max(0.0, min(poll, next_schedule - time.monotonic())))
        finally:
            self._state = "stopped"
            await asyncio.to_thread(self.release_trainer_role)

    async def _sleep(self, seconds: float) -> None:
        assert self._wake is not None
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        except TimeoutError:
            pass
        self._wake.clear()
