"""POST/GET /v1/edits, GET/DELETE /v1/edits/{id}, GET /v1/edits/{id}/events, POST /v1/edits/{id}/retry."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, Response

from app.api.auth import requires
from app.api.deps import (
    DEFAULT_PAGE,
    TEXT_FILTER,
    V1,
    ActorDep,
    AuditCursor,
    EditId,
    EditsCursor,
    EngineDep,
    IdempotencyKeyHeader,
    IdFilter,
    LimitQuery,
    RuntimeDep,
    SessionDep,
    SettingsDep,
)
from app.domain import EditStatus, Scope
from app.schemas.audit import AuditEventPublic, AuditEventsPublic
from app.schemas.common import ERROR_RESPONSES, ErrorResponse, Timestamp
from app.schemas.edits import EditCreate, EditPublic, EditsAccepted, EditsCreate, EditsPublic
from app.services import edits as edit_service

router = APIRouter(prefix=f"{V1}/edits", tags=["edits"], responses=ERROR_RESPONSES)

REPLAYED_HEADER = "Idempotent-Replayed"


@router.post(
    "",
    status_code=202,
    dependencies=[requires(Scope.EDITS_WRITE)],
    responses={
        202: {
            "headers": {
                REPLAYED_HEADER: {
                    "description": "`true` when an earlier request with this Idempotency-Key created these edits (nothing new was created)",
                    "schema": {"type": "string", "enum": ["true"]},
                }
            }
        },
        422: {
            "model": ErrorResponse,
            "description": "A value is not allowed, or the Idempotency-Key was used with another body (idempotency_key_reused)",
        },
    },
)
def submit_edits(
    *,
    session: SessionDep,
    engine: EngineDep,
    settings: SettingsDep,
    runtime: RuntimeDep,
    actor: ActorDep,
    idempotency_key: IdempotencyKeyHeader = None,
    body: Annotated[EditsCreate, Body(description="One edit object, or a JSON array of them")],
    response: Response,
) -> EditsAccepted:
    """Queue fact edits (committed before this returns); the next training run applies them."""
    items = [body] if isinstance(body, EditCreate) else body
    submitted = edit_service.submit_edits(
        session,
        engine=engine,
        settings=settings,
        actor=actor.name,
        on_behalf_of=actor.on_behalf_of,
        edits=items,
        idempotency_key=idempotency_key,
    )
    rows = submitted.edits
    if submitted.replayed:
        response.headers[REPLAYED_HEADER] = "true"
    else:
        runtime.metrics.edits_submitted.inc(len(rows))
    return EditsAccepted(ids=[r.id for r in rows], items=[EditPublic.model_validate(r) for r in rows])


@router.get("", dependencies=[requires(Scope.READ)])
def list_edits(
    *,
    session: SessionDep,
    settings: SettingsDep,
    status: Annotated[EditStatus | None, Query(description="Only edits in this status")] = None,
    subject: Annotated[str | None, Query(description="Exact subject, any case", json_schema_extra=TEXT_FILTER)] = None,
    q: Annotated[
        str | None,
        Query(description="Substring of prompt, target or subject", json_schema_extra=TEXT_FILTER),
    ] = None,
    created_after: Annotated[Timestamp | None, Query(description="Inclusive; UTC if no zone")] = None,
    created_before: Annotated[Timestamp | None, Query(description="Exclusive; UTC if no zone")] = None,
    expert_id: IdFilter = None,
    training_run_id: IdFilter = None,
    limit: LimitQuery = DEFAULT_PAGE,
    cursor: EditsCursor = None,
) -> EditsPublic:
    """Edits, newest first, with filters and cursor pagination."""
    page = edit_service.list_edits(
        session,
        settings=settings,
        status=status,
        subject=subject,
        search=q,
        created_after=created_after,
        created_before=created_before,
        expert_id=expert_id,
        training_run_id=training_run_id,
        limit=limit,
        cursor=cursor,
    )
    return EditsPublic(items=[EditPublic.model_validate(e) for e in page.items], next_cursor=page.next_cursor)


@router.get("/{edit_id}", dependencies=[requires(Scope.READ)])
def get_edit(*, session: SessionDep, edit_id: EditId) -> EditPublic:
    """One edit: its status, the expert holding it, timestamps, and the error if it failed."""
    return EditPublic.model_validate(edit_service.get_edit(session, edit_id=edit_id))


@router.get("/{edit_id}/events", dependencies=[requires(Scope.READ)])
def edit_events(*, session: SessionDep, edit_id: EditId, limit: LimitQuery = DEFAULT_PAGE, cursor: AuditCursor = None) -> AuditEventsPublic:
    """The edit's audit history, oldest first."""
    page = edit_service.edit_events(session, edit_id=edit_id, limit=limit, cursor=cursor)
    return AuditEventsPublic(items=[AuditEventPublic.model_validate(e) for e in page.items], next_cursor=page.next_cursor)


@router.post(
    "/{edit_id}/retry",
    status_code=202,
    dependencies=[requires(Scope.EDITS_WRITE)],
    responses={409: {"model": ErrorResponse, "description": "The edit is not failed (edit_state_conflict)"}},
)
def retry_edit(*, session: SessionDep, actor: ActorDep, edit_id: EditId) -> EditPublic:
    """Send a failed edit back to pending (its error is cleared; edit.retried keeps it); the next
    training run claims it again."""
    return EditPublic.model_validate(edit_service.retry_edit(session, actor=actor.name, on_behalf_of=actor.on_behalf_of, edit_id=edit_id))


@router.delete(
    "/{edit_id}",
    status_code=202,
    dependencies=[requires(Scope.EDITS_WRITE)],
    responses={
        200: {"model": EditPublic, "description": "Cancelled: the edit was not yet applied and never will be (status `cancelled`)"},
        202: {
            "description": "Retraction accepted (status `retracting`): the trainer retrains the edit's expert without it; "
            "the expert serves it until the replacement is live, then the edit is `retracted`"
        },
        409: {
            "model": ErrorResponse,
            "description": "The edit is cancelled, retracting, retracted, failed or rolled_back (edit_state_conflict)",
        },
    },
)
def withdraw_edit(*, session: SessionDep, runtime: RuntimeDep, actor: ActorDep, edit_id: EditId, response: Response) -> EditPublic:
    """Cancel an edit not yet applied (200), or retract an applied one (202): its expert is
    retrained without it and swapped in; its prompt then gets the unedited model's answer."""
    withdrawn = edit_service.withdraw_edit(session, actor=actor.name, on_behalf_of=actor.on_behalf_of, edit_id=edit_id)
    if withdrawn.cancelled:
        response.status_code = 200
    elif runtime.wake_worker is not None:
        runtime.wake_worker()
    return EditPublic.model_validate(withdrawn.edit)
