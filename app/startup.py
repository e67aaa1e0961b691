"""Start-up, written once for `lemoe serve` (the app's lifespan) and `lemoe worker`: migrate the
database, load the model (or take the engine given), elect the trainer and recover what a dead
process left half done (the trainer only), rebuild the active stack from SQL rows + files."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from app import store
from app.services import training as training_service
from app.services.runtime import Runtime
from app.services.stack import LiveStack
from app.worker import TrainingWorker

if TYPE_CHECKING:
    from app.engine.engine import Engine

log = logging.getLogger(__name__)


def start(runtime: Runtime, engine: Engine | None = None, *, train: bool) -> tuple[TrainingWorker | None, bool]:
    """Blocking start-up work (run it in a thread); sets `runtime.engine`, `.stack` and `.stage`.
    With `train`: the worker (the schedule), and whether it already recovered (it holds the
    trainer role)."""
    settings = runtime.settings
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if not settings.skip_migrate:
        runtime.stage = "migrating the database"
        store.migrate(runtime.database)
    if engine is None:
        from app.engine.engine import Engine

        model = settings.model_path or "bundled SmolLM2-135M-Instruct"
        runtime.stage = "loading the model"
        log.info("loading the model (%s) on %s", model, settings.device)
        engine = Engine.from_settings(settings)
    runtime.stage = "loading the expert stack"
    runtime.engine = engine
    stack = LiveStack(engine, runtime.session_factory, settings)

    worker, recovered = None, False
    if train:
        worker = TrainingWorker(settings, runtime.session_factory, engine, stack=stack, metrics=runtime.metrics)
        # Only the trainer recovers: on PostgreSQL another process may hold the role and be
        # training right now; this one then recovers when (if) it takes the role over.
        if worker.acquire_trainer_role():
            report = training_service.recover(runtime.session_factory)
            recovered = True
            if report.changed:
                log.warning(
                    "recovered from an interrupted run: runs %s marked interrupted, edits %s back to pending",
                    list(report.interrupted_run_ids),
                    list(report.edit_ids),
                )
        runtime.worker = worker
        runtime.wake_worker = worker.wake
        runtime.worker_state = lambda: worker.state

    try:
        names = stack.sync()
    except BaseException:
        if worker is not None:
            worker.release_trainer_role()
        raise
    runtime.stack = stack
    runtime.stage = "ready"
    for q in stack.quarantined.values():
        log.error(
            "serving without expert %r (id %s): %s: %s. Restore its files (config.json and "
            "weights.safetensors) from a backup, or run `lemoe experts quarantine %s`",
            q.name,
            q.expert_id,
            q.path,
            q.reason,
            q.expert_id,
        )
    log.info(
        "ready: model %s on %s, %d active experts %s, database %s",
        engine.model_name,
        engine.device,
        len(names),
        names,
        store.normalize_url(settings.resolved_database_url).render_as_string(hide_password=True),
    )
    return worker, recovered
