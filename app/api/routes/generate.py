"""GET and POST /v1/generate, POST /v1/generate/compare (base model beside the edited stack),
GET /v1/route-scores (the last routes against the gate)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Annotated, TypeVar

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from app.api.auth import requires
from app.api.deps import V1, EngineDep, RuntimeDep, SettingsDep, StackDep
from app.domain import Scope
from app.metrics import RECENT_ROUTES
from app.schemas.common import ERROR_RESPONSES
from app.schemas.generation import (
    BaseAnswer,
    ExpertRef,
    GenerateQuery,
    GenerateRequest,
    GenerationComparison,
    GenerationPublic,
    RouteThresholdsPublic,
)
from app.schemas.routing import RouteScorePublic, RouteScoresPublic
from app.services import generation as generation_service
from app.services.generation import Generated

if TYPE_CHECKING:
    from app.engine.engine import RouteThresholds

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
        span_score=g.span_score,
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


def _thresholds(t: RouteThresholds) -> RouteThresholdsPublic:
    return RouteThresholdsPublic(gate=t.gate, subject=t.subject, relation=t.relation, sentence_floor=t.sentence_floor, span=t.span)


@router.post("/generate/compare", dependencies=[requires(Scope.GENERATE)])
async def compare(
    *,
    request: Request,
    engine: EngineDep,
    stack: StackDep,
    settings: SettingsDep,
    runtime: RuntimeDep,
    body: GenerateRequest,
) -> GenerationComparison:
    """The prompt through the base model (no expert) and through the edited stack, side by side,
    with why the stack answered as it did: the expert, route score, nearest edit, subject and
    relation match, and the thresholds they met."""
    call = partial(generation_service.compare, engine=engine, stack=stack, settings=settings, request=body, metrics=runtime.metrics)
    result = await run_cancellable(request, call)
    edited = _public(result.edited)
    return GenerationComparison(
        prompt=edited.prompt,
        base=BaseAnswer(text=result.base.text, completion_tokens=result.base.completion_tokens),
        edited=edited,
        changed=result.base.text != result.edited.text,
        thresholds=_thresholds(result.thresholds),
    )


@router.get("/route-scores", dependencies=[requires(Scope.READ)])
def route_scores(
    *,
    engine: EngineDep,
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=RECENT_ROUTES, description=f"How many of the last routes, 1-{RECENT_ROUTES}")] = 200,
) -> RouteScoresPublic:
    """The route scores of the last requests this process served while experts were live, oldest
    first, and the gate they met: how close traffic comes to the threshold."""
    samples = runtime.metrics.recent_routes.last(limit)
    items = [
        RouteScorePublic(
            at=s.at,
            score=s.score,
            expert=None if s.expert_name is None else ExpertRef(id=s.expert_id, name=s.expert_name),
            nearest_edit_id=s.nearest_edit_id,
        )
        for s in samples
    ]
    return RouteScoresPublic(items=items, thresholds=_thresholds(engine.thresholds))
