"""GET /v1/audit: the append-only log (no route changes or removes an event)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from app.api.auth import requires
from app.api.deps import (
    ACTOR_FILTER,
    DEFAULT_PAGE,
    V1,
    AuditCursor,
    IdFilter,
    LimitQuery,
    SessionDep,
)
from app.domain import AuditAction, Scope
from app.schemas.audit import AuditEventPublic, AuditEventsPublic
from app.schemas.common import ERROR_RESPONSES, Timestamp
from app.services import audit as audit_service

router = APIRouter(prefix=f"{V1}/audit", tags=["audit"], responses=ERROR_RESPONSES)


@router.get("", dependencies=[requires(Scope.READ)])
def list_audit(
    *,
    session: SessionDep,
    action: Annotated[AuditAction | None, Query(description="Only this action")] = None,
    actor: Annotated[
        str | None,
        Query(description="Only events by this actor (exact)", json_schema_extra=ACTOR_FILTER),
    ] = None,
    edit_id: IdFilter = None,
    expert_id: IdFilter = None,
    training_run_id: IdFilter = None,
    since: Annotated[Timestamp | None, Query(description="Inclusive; ISO 8601, UTC if no zone")] = None,
    until: Annotated[Timestamp | None, Query(description="Exclusive; ISO 8601, UTC if no zone")] = None,
    order: Annotated[Literal["desc", "asc"], Query(description="desc: newest first")] = "desc",
    limit: LimitQuery = DEFAULT_PAGE,
    cursor: AuditCursor = None,
) -> AuditEventsPublic:
    """Every submission, planning, training start/end, expert (de)activation and failure."""
    page = audit_service.list_audit(
        session,
        action=action,
        actor=actor,
        edit_id=edit_id,
        expert_id=expert_id,
        training_run_id=training_run_id,
        since=since,
        until=until,
        order=order,
        limit=limit,
        cursor=cursor,
    )
    return AuditEventsPublic(items=[AuditEventPublic.model_validate(e) for e in page.items], next_cursor=page.next_cursor)
