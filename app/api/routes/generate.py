"""GET and POST /v1/generate."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import V1, EngineDep, RuntimeDep, SettingsDep, StackDep
from app.schemas.common import ERROR_RESPONSES
from app.schemas.generation import ExpertRef, GenerateQuery, GenerateRequest, GenerationPublic
from app.services import generation as generation_service
from app.services.generation import Generated

router = APIRouter(prefix=V1, tags=["generate"], responses=ERROR_RESPONSES)


def _public(g: Generated) -> GenerationPublic:
    expert = None if g.expert_name is None else ExpertRef(id=g.expert_id, name=g.expert_name)
    return GenerationPublic(
        prompt=g.prompt,
        text=g.text,
        expert=expert,
        route_score=g.route_score,
        nearest_edit_id=g.nearest_edit_id,
        subject_score=g.subject_score,
        model=g.model,
        completion_tokens=g.completion_tokens,
    )


# Plain `def` routes run in the thread pool: generation never blocks the event loop.
@router.post("/generate")
def generate_post(
    *, engine: EngineDep, stack: StackDep, settings: SettingsDep, runtime: RuntimeDep, body: GenerateRequest
) -> GenerationPublic:
    """Continue a prompt through the routed expert stack; says which expert (if any) served it."""
    return _public(
        generation_service.generate(
            engine=engine, stack=stack, settings=settings, draft=body.to_draft(), metrics=runtime.metrics
        )
    )


@router.get("/generate")
def generate_get(
    *,
    engine: EngineDep,
    stack: StackDep,
    settings: SettingsDep,
    runtime: RuntimeDep,
    params: Annotated[GenerateQuery, Query()],
) -> GenerationPublic:
    """The same as POST, with the fields as query parameters (?prompt=...&max_new_tokens=...)."""
    return _public(
        generation_service.generate(
            engine=engine, stack=stack, settings=settings, draft=params.to_draft(), metrics=runtime.metrics
        )
    )
