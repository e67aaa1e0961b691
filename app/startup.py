"""Start-up, written once for `lemoe serve` (the app's lifespan) and `lemoe worker`: migrate the
database, create the deployment's admin key (LEMOE_ADMIN_KEY[_FILE]), load the model (or take the
engine given), elect the trainer and recover what a dead process left half done (the trainer
only: runs, edits, orphaned expert folders), rebuild the active stack from SQL rows + files. Also the check of the interface `lemoe
serve` may listen on."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from app import store
from app.config import Settings
from app.domain import AuthMode
from app.services import keys as key_service
from app.services import training as training_service
from app.services.runtime import MIGRATING, Runtime
from app.services.stack import LiveStack
from app.worker import TrainingWorker

if TYPE_CHECKING:
    from app.engine.engine import Engine

log = logging.getLogger(__name__)


def start(
    runtime: Runtime, engine: Engine | None = None, *, train: bool, on_migrated: Callable[[], None] | None = None
) -> tuple[TrainingWorker | None, bool]:
    """Blocking start-up work (run it in a thread); sets `runtime.engine`, `.stack` and `.stage`.
    With `train`: the worker (the schedule), and whether it already recovered (it holds the
    trainer role). `on_migrated` runs once the database is ready, before the model loads."""
    settings = runtime.settings
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if not settings.skip_migrate:
        runtime.stage = MIGRATING
        store.migrate(runtime.database)
    secret = settings.admin_secret()
    if secret is not None:
        with runtime.session_factory() as session:
            key_service.ensure_admin_key(session, name=settings.admin_key_name, secret=secret)
    if on_migrated is not None:
        on_migrated()
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
            worker.prune_orphaned_folders()
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


def is_loopback_host(host: str) -> bool:
    """Whether binding `host` reaches this machine only (a name other than localhost: no)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_refusal(settings: Settings, host: str) -> str | None:
    """Why `lemoe serve` must not listen on `host`, or None. With LEMOE_AUTH=auto and no API key
    (none in the database, none from LEMOE_ADMIN_KEY[_FILE]) only loopback is allowed: anyone
    else reaching the port could edit the model. LEMOE_AUTH=off allows it, with a warning."""
    if is_loopback_host(host) or settings.auth is AuthMode.ON:
        return None
    if settings.auth is AuthMode.OFF:
        log.warning("LEMOE_AUTH=off and listening on %s: no API key is checked, anyone who reaches the port can edit the model", host)
        return None
    if settings.admin_key is not None or settings.admin_key_file is not None or _keys_exist(settings):
        return None
    return (
        f"refusing to listen on {host}: no API key exists, and without one (LEMOE_AUTH=auto) this server serves "
        "loopback clients only. Create the first admin key with `lemoe keys create admin --scopes admin` (clients "
        "then send `Authorization: Bearer <key>`), or give one with LEMOE_ADMIN_KEY / LEMOE_ADMIN_KEY_FILE, or set "
        "LEMOE_AUTH=off to serve everyone without keys"
    )


def _keys_exist(settings: Settings) -> bool:
    """Whether the database holds any API key; a database not migrated yet (or unreachable) holds none."""
    from app.services.runtime import open_database

    database = open_database(settings)
    try:
        with store.make_session_factory(database)() as session:
            return key_service.any_key(session)
    except SQLAlchemyError as exc:
        log.debug("no API keys found: %s", exc)
        return False
    finally:
        database.dispose()
