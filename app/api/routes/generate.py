"""GET and POST /v1/generate."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from functools import partial
from typing import Annotated, TypeVar

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from app.api.auth import requires
from app.api.deps import V1, EngineDep, RuntimeDep, SettingsDep, StackDep
from app.domain import Scope
from app.schemas.common import ERROR_RESPONSES
from app.schemas.generation import ExpertRef, GenerateQuery, GenerateRequest, GenerationPublic
from app.services import generation as generation_service
from app.services.generation import Generated

router = APIRouter(prefix=V1, tags=["generate"], responses=ERROR_RESPONSES)

T = TypeVar("T")

# How often a waiting request checks whether its client is still there.
DISCONNECT_POLL_S = 0.2


def _public(g: Generated) -> GenerationPublic:
    expert = None if g.expert_name is None else ExpertRef(id=g.expert_id, name=g.expert_name)
    return GenerationPublic(
        prompt=g.prompt,
        text=g.text,
        expert=expert,
        route_score=g.route_score,
        nearest_edit_id=g.nearest_edit_id,
        subject_score=g.subject_score,
        relation_score=g.relation_score,
        model=g.model,
        completion_tokens=g.completion_tokens,
    )


async def _generate(request: Request, runtime: RuntimeDep, body: GenerateRequest, **deps) -> GenerationPublic:
    """Generate in a worker thread (never on the event loop); a client that hangs up stops it."""
    call = partial(generation_service.generate, request=body, metrics=runtime.metrics, **deps)
    return _public(await run_cancellable(request, call))


async def run_cancellable(request: Request, call: Callable[..., T]) -> T:
    """`call(cancel=event)` in a worker thread; the event is set (the generation stops at its
    next token) when the client hangs up or this request is cancelled."""
    cancel = threading.Event()
    task = asyncio.ensure_future(run_in_threadpool(partial(call, cancel=cancel)))
    task.add_done_callback(retrieve)
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if not task.done() and await request.is_disconnected():
                cancel.set()  # the generation ends at its next token and raises
        return task.result()
    finally:
        cancel.set()  # a no-op once it finished; stops it when this request is cancelled


def retrieve(task: asyncio.Future) -> None:
    """Mark a result nobody awaits any more (the request was cancelled) as seen."""
    if not task.cancelled():
        task.exception()


@router.post("/generate", dependencies=[requires(Scope.GENERATE)])
async def generate_post(
    *,
    request: Request,
    engine: EngineDep,
    stack: StackDep,
    settings: SettingsDep,
    runtime: RuntimeDep,
    body: GenerateRequest,
) -> GenerationPublic:
    """Continue a prompt through the routed expert stack; says which expert (if any) served it."""
    return await _generate(request, runtime, body, engine=engine, stack=stack, settings=settings)


@router.get("/generate", dependencies=[requires(Scope.GENERATE)])
async def generate_get(
    *,
    request: Request,
    engine: EngineDep,
    stack: StackDep,
    settings: SettingsDep,
    runtime: RuntimeDep,
    params: Annotated[GenerateQuery, Query()],
) -> GenerationPublic:
    """The same as POST, with the fields as query parameters (?prompt=...&max_new_tokens=...)."""
    return await _generate(request, runtime, params, engine=engine, stack=stack, settings=settings)
