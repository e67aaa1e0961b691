"""POST/GET /v1/training-runs, GET /v1/training-runs/{id}."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Query
from sqlalchemy.orm import Session

from app.api.auth import requires
from app.api.deps import (
    DEFAULT_PAGE,
    V1,
    ActorDep,
    LimitQuery,
    RunId,
    RunsCursor,
    RuntimeDep,
    SessionDep,
    SettingsDep,
)
from app.domain import RunStatus, Scope
from app.schemas.common import ERROR_RESPONSES, ErrorResponse
from app.schemas.training import TrainingRunPublic, TrainingRunsPublic
from app.services import runs as run_service

if TYPE_CHECKING:
    from app.store import TrainingRun

router = APIRouter(prefix=f"{V1}/training-runs", tags=["training"], responses=ERROR_RESPONSES)


def _public(session: Session, runs: list[TrainingRun]) -> list[TrainingRunPublic]:
    expert_ids = run_service.expert_ids_by_run(session, run_ids=[r.id for r in runs])
    now = datetime.now(UTC)
    out = []
    for run in runs:
        duration = None
        if run.started_at is not None:
            duration = ((run.finished_at or now) - run.started_at).total_seconds()
        eta = run_service.eta_seconds(run, duration)
        out.append(
            TrainingRunPublic.model_validate(
                {
                    **{k: getattr(run, k) for k in TrainingRunPublic.model_fields if hasattr(run, k)},
                    "expert_ids": expert_ids.get(run.id, []),
                    "duration_s": duration,
                    "eta_s": eta,
                }
            )
        )
    return out


@router.post(
    "",
    status_code=202,
    dependencies=[requires(Scope.EDITS_WRITE)],
    responses={409: {"model": ErrorResponse, "description": "A run is already queued/running (Location: that run), or no edit is pending"}},
)
def trigger_run(*, session: SessionDep, settings: SettingsDep, runtime: RuntimeDep, actor: ActorDep) -> TrainingRunPublic:
    """Queue a training run now (the worker starts it at once); follow it with GET."""
    run = run_service.trigger_run(session, settings=settings, actor=actor.name, on_behalf_of=actor.on_behalf_of)
    if runtime.wake_worker is not None:
        runtime.wake_worker()
    return _public(session, [run])[0]


@router.get("", dependencies=[requires(Scope.READ)])
def list_runs(
    *,
    session: SessionDep,
    status: Annotated[RunStatus | None, Query(description="Only runs in this status")] = None,
    limit: LimitQuery = DEFAULT_PAGE,
    cursor: RunsCursor = None,
) -> TrainingRunsPublic:
    """Training runs, newest first."""
    page = run_service.list_runs(session, status=status, limit=limit, cursor=cursor)
    return TrainingRunsPublic(items=_public(session, page.items), next_cursor=page.next_cursor)


@router.get("/{run_id}", dependencies=[requires(Scope.READ)])
def get_run(*, session: SessionDep, run_id: RunId) -> TrainingRunPublic:
    """A run's status and progress: edits done / total, current loss, experts, duration."""
    return _public(session, [run_service.get_run(session, run_id=run_id)])[0]
