"""GET /v1/experts, GET /v1/experts/{id}, POST /v1/experts/{id}/deactivate|activate."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Query

from app.api.auth import requires
from app.api.deps import V1, ActorDep, ExpertId, SessionDep, StackDep
from app.domain import ExpertStatus, Scope
from app.schemas.common import ERROR_RESPONSES, ErrorResponse
from app.schemas.experts import ExpertChange, ExpertDetail, ExpertPublic, ExpertsPublic
from app.services import experts as expert_service
from app.services.experts import ExpertChangeResult

if TYPE_CHECKING:
    from app.store import Expert

router = APIRouter(prefix=f"{V1}/experts", tags=["experts"], responses=ERROR_RESPONSES)
CONFLICT = {409: {"model": ErrorResponse, "description": "Already in that state, or its files are bad"}}


def _detail(expert: Expert, edit_ids: list[int]) -> ExpertDetail:
    return ExpertDetail(**ExpertPublic.model_validate(expert).model_dump(), edit_ids=edit_ids)


def _change(result: ExpertChangeResult) -> ExpertChange:
    return ExpertChange(
        expert=_detail(result.expert, result.edit_ids),
        changed_edit_ids=result.changed_edit_ids,
        edit_status=result.edit_status,
        active_experts=result.active_experts,
    )


@router.get("", dependencies=[requires(Scope.READ)])
def list_experts(
    *,
    session: SessionDep,
    status: Annotated[ExpertStatus | None, Query(description="Only experts in this status")] = None,
) -> ExpertsPublic:
    """All experts in stack order, oldest first (an expert that replaced another stands in its place)."""
    return ExpertsPublic(items=[ExpertPublic.model_validate(e) for e in expert_service.list_experts(session, status=status)])


@router.get("/{expert_id}", dependencies=[requires(Scope.READ)])
def get_expert(*, session: SessionDep, expert_id: ExpertId) -> ExpertDetail:
    """One expert and the edits it was trained on."""
    expert, edit_ids = expert_service.get_expert(session, expert_id=expert_id)
    return _detail(expert, edit_ids)


@router.post("/{expert_id}/deactivate", responses=CONFLICT, dependencies=[requires(Scope.ADMIN)])
def deactivate_expert(*, session: SessionDep, stack: StackDep, actor: ActorDep, expert_id: ExpertId) -> ExpertChange:
    """Rollback: its edits become rolled_back and their prompts get the base model's answers."""
    return _change(
        expert_service.deactivate_expert(session, stack=stack, expert_id=expert_id, actor=actor.name, on_behalf_of=actor.on_behalf_of)
    )


@router.post("/{expert_id}/activate", responses=CONFLICT, dependencies=[requires(Scope.ADMIN)])
def activate_expert(*, session: SessionDep, stack: StackDep, actor: ActorDep, expert_id: ExpertId) -> ExpertChange:
    """Restore a deactivated expert (its files are checked first); its edits are applied again."""
    return _change(
        expert_service.activate_expert(session, stack=stack, expert_id=expert_id, actor=actor.name, on_behalf_of=actor.on_behalf_of)
    )
