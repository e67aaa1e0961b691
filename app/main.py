"""The FastAPI app: `create_app(settings)`; its lifespan loads everything and starts the worker.

Start-up order: migrate the database, load the model (or take the engine given), recover what a
dead process left half done (the trainer only), rebuild the active stack from SQL rows + files,
start the training worker and the active-stack watcher. Shutdown stops both, interrupting a run
in progress cleanly.

An active expert whose files are missing or corrupt does not stop start-up: it is quarantined in
this process (logged, audited as expert.load_failed, listed by /readyz as `degraded` and counted
in /metrics), the rest of the stack serves, and every stack poll retries it, so restoring the
file heals it. `lemoe experts check | quarantine` inspect and repair offline.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from app import store
from app.api.auth import AccessControl, check_routes_declare_access
from app.api.errors import install_error_handlers
from app.api.middleware import DEFAULT_BODY_LIMIT, RequestBodyMiddleware, UnhandledErrorMiddleware
from app.api.openapi import install_openapi
from app.api.request_metrics import HttpMetrics, RequestObserverMiddleware
from app.api.routes import audit, console, edits, events, experts, generate, health, keys, openai, training
from app.config import Settings, get_settings
from app.metrics import Metrics
from app.services.runtime import Runtime, open_database
from app.startup import start as start_up
from app.worker import STOP_TIMEOUT_S, TrainingWorker

if TYPE_CHECKING:
    from app.engine.engine import Engine

log = logging.getLogger(__name__)

WORKER_TASK = "lemoe-training-worker"
DOCS_URL, REDOC_URL = "/docs", "/redoc"
START_TASK = "lemoe-start-up"

API_DESCRIPTION = """Editing as a service: submit fact edits, train them into routed experts,
generate through the edited model, follow every change in the audit log, and roll back.
Every error has the body `{"error": {"type": "...", "message": "..."}}`.

Access: an API key as `Authorization: Bearer <key>` (the Authorize button), with the scope each
operation names (`x-lemoe-scope`): generate, edits:write, read or admin (admin implies the
others). Without any key, the server answers loopback clients only."""


def create_app(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    load_in_background: bool | None = None,
    on_start_failure: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The app; `engine` lets tests share one already-loaded model between apps.

    With `load_in_background` (the default when the model is loaded here, i.e. no `engine`), HTTP
    serves at once: /healthz answers 200 and /readyz 503 naming the start-up stage while the
    database is migrated and the model loads; a start-up that fails is logged, /readyz says so,
    and `on_start_failure` is called (`lemoe serve` then exits). Otherwise the app starts
    serving only once everything is loaded, and a failure stops the start-up.
    """
    settings = settings or get_settings()
    background = engine is None if load_in_background is None else load_in_background
    database = open_database(settings)
    session_factory = store.make_session_factory(database)
    http_metrics = HttpMetrics()  # registered first: /metrics lists the HTTP metrics first
    metrics = Metrics(session_factory, registry=http_metrics.registry)
    runtime = Runtime(settings=settings, database=database, session_factory=session_factory, metrics=metrics)
    metrics.track_stack(lambda: runtime.stack)
    metrics.track_batch(lambda: None if runtime.engine is None else runtime.engine.scheduler)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tasks: list[asyncio.Task] = []
        started: list[TrainingWorker] = []

        async def start() -> None:
            worker, recovered = await asyncio.to_thread(
                start_up, runtime, engine, train=settings.worker_enabled, on_migrated=access.announce
            )
            if worker is not None:
                started.append(worker)
                tasks.append(asyncio.create_task(worker.run_forever(recovered=recovered), name=WORKER_TASK))
            if settings.stack_poll_interval_s > 0:
                tasks.append(asyncio.create_task(_watch_stack(runtime), name="lemoe-stack-watcher"))

        async def start_in_background() -> None:
            try:
                await start()
            except Exception as exc:
                runtime.stage = f"start-up failed ({type(exc).__name__}); see the server log"
                log.exception("start-up failed; this process will not become ready")
                if on_start_failure is not None:
                    on_start_failure(exc)

        try:
            if background:
                tasks.append(asyncio.create_task(start_in_background(), name=START_TASK))
            else:
                await start()
            yield
        finally:
            for worker in started:
                worker.stop()
            for task in list(tasks):
                if task.get_name() != WORKER_TASK:
                    task.cancel()  # the worker stops by itself, interrupting a run cleanly
            for task in list(tasks):
                try:
                    timeout = STOP_TIMEOUT_S if task.get_name() == WORKER_TASK else 5.0
                    await asyncio.wait_for(task, timeout=timeout)
                except (asyncio.CancelledError, TimeoutError):
                    pass
                except Exception:
                    log.exception("background task %s failed", task.get_name())
            for worker in started:  # a worker started while the loop above waited
                worker.stop()
            database.dispose()

    app = FastAPIOffline(
        title="lemoe-server",
        version="0.1.0",
        description=API_DESCRIPTION,
        lifespan=lifespan,
        docs_url=DOCS_URL,
        redoc_url=REDOC_URL,
    )
    app.state.runtime = runtime
    access = AccessControl(settings, session_factory, stage=lambda: runtime.stage)
    app.state.access = access
    install_error_handlers(app)
    # Innermost first: each add_middleware wraps the ones before it.
    app.add_middleware(UnhandledErrorMiddleware)
    app.add_middleware(
        RequestBodyMiddleware,
        limits={
            ("POST", "/v1/edits"): max_body_bytes(settings),
            ("POST", "/v1/generate"): generate_body_bytes(settings),
            ("POST", "/v1/generate/compare"): generate_body_bytes(settings),
            ("POST", "/v1/completions"): completion_body_bytes(settings),
            ("POST", "/v1/chat/completions"): chat_body_bytes(settings),
        },
        read_timeout_s=settings.body_read_timeout_s,
    )
    app.add_middleware(RequestObserverMiddleware, metrics=http_metrics)  # outermost: sees the 408/413s
    for module in (edits, generate, openai, training, experts, audit, events, keys, health, console):
        app.include_router(module.router)
    check_routes_declare_access(app, documentation=(DOCS_URL, REDOC_URL, app.openapi_url, app.swagger_ui_oauth2_redirect_url))
    install_openapi(app, settings)
    return app


def max_body_bytes(settings: Settings) -> int:
    """Room for the largest valid edit request (every text at its limit, JSON-escaped), no more."""
    texts = settings.max_edits_per_request * (3 + settings.max_rephrases)
    return max(1 << 20, texts * (settings.max_text_chars * 6 + 64))


def generate_body_bytes(settings: Settings) -> int:
    """Room for one prompt at max_text_chars, every character JSON-escaped (a character outside
    the BMP is a 12-byte surrogate pair), plus the other fields."""
    return max(DEFAULT_BODY_LIMIT, settings.max_text_chars * 12 + 4096)


def completion_body_bytes(settings: Settings) -> int:
    """A prompt and four stop strings at max_text_chars, JSON-escaped, plus the other fields."""
    return max(DEFAULT_BODY_LIMIT, 5 * settings.max_text_chars * 12 + 4096)


def chat_body_bytes(settings: Settings) -> int:
    """max_chat_messages messages and four stop strings at max_text_chars, JSON-escaped."""
    texts = settings.max_chat_messages + 4
    return max(DEFAULT_BODY_LIMIT, texts * (settings.max_text_chars * 12 + 512) + 4096)


async def _watch_stack(runtime: Runtime) -> None:
    """Reload the experts when another process changed the active set (DESIGN section 6)."""
    interval = runtime.settings.stack_poll_interval_s
    while True:
        await asyncio.sleep(interval)
        if runtime.stack is None:
            continue
        try:
            await asyncio.to_thread(runtime.stack.sync_if_changed)
        except Exception:
            log.exception("reloading the expert stack failed; the previous stack stays live")
