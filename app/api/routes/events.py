"""GET /v1/events: server-sent events of edits and training runs as their changes commit."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated

import anyio
from fastapi import APIRouter, Header, Query
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.api.auth import PrincipalDep, requires
from app.api.deps import V1, IdFilter, RuntimeDep, SettingsDep
from app.domain import AuditAction, Scope
from app.schemas.audit import AuditEventPublic
from app.schemas.common import ERROR_RESPONSES
from app.schemas.events import PROGRESS_EVENT, TrainingRunProgress
from app.services import keys as key_service
from app.services.checks import MAX_ID
from app.services.events import EventFeed, EventFilter
from app.services.keys import Principal
from app.services.runs import eta_seconds

log = logging.getLogger(__name__)

MAX_STREAM_S = 24 * 3600.0
MAX_EVENTS = 100_000
# How often an open stream asks again whether its API key still stands: a revoked key's stream
# ends within this time, not when it would have timed out.
KEY_RECHECK_S = 5.0
KEY_REVOKED_EVENT = "stream.key_revoked"

router = APIRouter(prefix=V1, tags=["events"], responses=ERROR_RESPONSES)

STREAM = {
    200: {
        "content": {
            "text/event-stream": {
                # Before OpenAPI 3.2, the `schema` of an event stream describes one event.
                "schema": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string", "description": "The audit event's id (absent on progress events)"},
                        "event": {"type": "string", "description": f"Its action, or {PROGRESS_EVENT}"},
                        "data": {"type": "string", "description": "JSON: the audit event as GET /v1/audit lists it, or the run's progress"},
                    },
                    "required": ["event", "data"],
                }
            }
        },
        "description": "Server-sent events until the client hangs up, `limit` or `timeout_s` is reached, or the server stops",
    }
}


@router.get("/events", response_class=EventSourceResponse, responses=STREAM, dependencies=[requires(Scope.READ)])
async def stream_events(
    *,
    runtime: RuntimeDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    edit_id: IdFilter = None,
    training_run_id: IdFilter = None,
    action: Annotated[AuditAction | None, Query(description="Only this action (and then no progress events)")] = None,
    after: Annotated[
        int | None,
        Query(ge=0, le=MAX_ID, description="Start after this audit id (0: the whole log); default: events from now on"),
    ] = None,
    limit: Annotated[int | None, Query(ge=1, le=MAX_EVENTS, description="End the stream after this many audit events")] = None,
    timeout_s: Annotated[
        float | None,
        Query(gt=0, le=MAX_STREAM_S, description="End the stream after this many seconds (at most LEMOE_EVENTS_MAX_STREAM_S, 1 h)"),
    ] = None,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            description="Sent by a reconnecting EventSource: resume after this audit id (wins over ?after=; "
            "a value that is no audit id is ignored)",
        ),
    ] = None,
) -> EventSourceResponse:
    """Edit and training-run events as they commit, from every process sharing the database:
    each audit event (`id`: its audit id, `event`: its action, `data`: as GET /v1/audit shows it),
    `training_run.progress` events while a run trains (no id), and a keep-alive comment when
    quiet. Filter by edit, run or action; resume with Last-Event-ID or `?after=`. When the key
    the stream was opened with is revoked, it ends with a `stream.key_revoked` event."""
    start = _resume_after(last_event_id, after)
    feed = EventFeed(runtime.session_factory, EventFilter(edit_id=edit_id, training_run_id=training_run_id, action=action), after=start)
    deadline = time.monotonic() + min(timeout_s or settings.events_max_stream_s, settings.events_max_stream_s)
    return EventSourceResponse(
        _events(
            feed, poll_s=settings.events_poll_interval_s, limit=limit, deadline=deadline, key=_KeyWatch(runtime.session_factory, principal)
        ),
        ping=max(1, round(settings.events_keepalive_s)),
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def _resume_after(last_event_id: str | None, after: int | None) -> int | None:
    """Last-Event-ID when it is an audit id (what this server sends as `id`), else `after`: a
    reconnecting client may carry an id another server sent, which says nothing here."""
    value = (last_event_id or "").strip()
    if value.isascii() and value.isdigit():
        return min(int(value), MAX_ID)
    return after


class _KeyWatch:
    """Whether the stream's key (None: keys not required when it opened) was revoked since,
    asked of the database at most every KEY_RECHECK_S."""

    def __init__(self, session_factory, principal: Principal | None) -> None:
        self.session_factory = session_factory
        self.principal = principal
        self.next_check = time.monotonic() + KEY_RECHECK_S

    def revoked(self) -> bool:
        if self.principal is None or time.monotonic() < self.next_check:
            return False
        self.next_check = time.monotonic() + KEY_RECHECK_S
        with self.session_factory() as session:
            return key_service.revoked_since(session, self.principal)


async def _events(feed: EventFeed, *, poll_s: float, limit: int | None, deadline: float, key: _KeyWatch) -> AsyncIterator[ServerSentEvent]:
    """Poll the feed until the limit or deadline; a database that does not answer is retried at
    the next poll (the stream stays open). A hang-up or the server stopping cancels this."""
    sent = 0
    while True:
        try:
            revoked = await anyio.to_thread.run_sync(key.revoked)
        except Exception:
            log.warning("GET /v1/events: checking the stream's API key failed; retrying", exc_info=True)
            revoked = False
        if revoked:
            name = key.principal.name if key.principal else ""
            yield ServerSentEvent(data=json.dumps({"detail": f"API key {name!r} was revoked; the stream ends"}), event=KEY_REVOKED_EVENT)
            return
        try:
            audits, runs = await anyio.to_thread.run_sync(feed.poll)
        except Exception:
            log.warning("GET /v1/events: reading the audit log failed; retrying", exc_info=True)
            audits, runs = [], []
        for event in audits:
            yield ServerSentEvent(data=AuditEventPublic.model_validate(event).model_dump_json(), event=event.action.value, id=str(event.id))
            sent += 1
            if limit is not None and sent >= limit:
                return
        now = datetime.now(UTC)
        for run in runs:
            elapsed = None if run.started_at is None else (now - run.started_at).total_seconds()
            progress = TrainingRunProgress.model_validate(run).model_copy(update={"eta_s": eta_seconds(run, elapsed)})
            yield ServerSentEvent(data=progress.model_dump_json(), event=PROGRESS_EVENT)
        wait = min(poll_s, deadline - time.monotonic())
        if wait <= 0:
            return
        await anyio.sleep(wait)
