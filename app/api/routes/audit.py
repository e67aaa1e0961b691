"""GET /v1/audit: the append-only log (no route changes or removes an event); GET /v1/audit/daily:
how many events of one action each day saw (the console's edits-applied-per-day chart)."""

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
from app.schemas.audit import AuditEventPublic, AuditEventsPublic, DailyCountPublic, DailyCountsPublic
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


@router.get("/daily", dependencies=[requires(Scope.READ)])
def daily_audit_counts(
    *,
    session: SessionDep,
    action: Annotated[AuditAction, Query(description="The action to count, e.g. edit.applied")] = AuditAction.EDIT_APPLIED,
    days: Annotated[
        int, Query(ge=1, le=audit_service.MAX_DAYS, description=f"How many UTC days back, today included (1-{audit_service.MAX_DAYS})")
    ] = 30,
) -> DailyCountsPublic:
    """Events of one action per UTC day over the last `days` days (default: edits applied per day, 30 days)."""
    counts = audit_service.daily_counts(session, action=action, days=days)
    return DailyCountsPublic(action=action, items=[DailyCountPublic(day=c.day, count=c.count) for c in counts])
