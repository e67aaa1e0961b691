"""GET /healthz, /readyz, /metrics (outside /v1: for orchestrators and scrapers)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.api.auth import public, requires
from app.api.deps import RuntimeDep
from app.domain import Scope
from app.schemas.common import ErrorResponse
from app.schemas.health import Health, QuarantinedExpert, Readiness
from app.services import health as health_service

router = APIRouter(tags=["health"])


@router.get("/healthz", dependencies=[public()])
async def healthz() -> Health:
    """The process is up (no dependencies checked).

    `async`: it runs on the event loop, so it answers even while every worker thread is stuck
    (e.g. on a hung database)."""
    return Health()


@router.get("/readyz", dependencies=[public()], responses={503: {"model": ErrorResponse, "description": "Not ready"}})
def readyz(runtime: RuntimeDep) -> Readiness:
    """The model is loaded and the database answers (503 naming the start-up stage, e.g.
    "not ready: loading the model", or the database error otherwise), and the stack this process
    really serves: `degraded` (still 200) while an active expert's files cannot be loaded."""
    report = health_service.readiness(
        session_factory=runtime.session_factory,
        engine=runtime.engine,
        stack=runtime.stack,
        stage=runtime.stage,
    )
    return Readiness(
        status="degraded" if report.degraded else "ready",
        model=report.model,
        device=report.device,
        active_experts=report.served_experts,
        stack_version=report.stack_version,
        database_stack_version=report.database_stack_version,
        stale=report.stale,
        quarantined_experts=[QuarantinedExpert(id=q.expert_id, name=q.name, path=q.path, reason=q.reason) for q in report.quarantined],
        worker=runtime.worker_state(),
    )


# Open unless LEMOE_METRICS_PUBLIC=false: then a key with the read scope (when keys are required).
@router.get("/metrics", response_class=Response, dependencies=[requires(Scope.READ, open_setting="metrics_public")])
def metrics(runtime: RuntimeDep) -> Response:
    """Prometheus text format."""
    body, content_type = runtime.metrics.render()
    return Response(content=body, media_type=content_type)
