"""GET /healthz, /readyz, /metrics (outside /v1: for orchestrators and scrapers)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.api.deps import RuntimeDep
from app.schemas.common import ErrorResponse
from app.schemas.health import Health, Readiness
from app.services import health as health_service

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> Health:
    """The process is up (no dependencies checked).

    `async`: it runs on the event loop, so it answers even while every worker thread is stuck
    (e.g. on a hung database)."""
    return Health()


@router.get("/readyz", responses={503: {"model": ErrorResponse, "description": "Not ready"}})
def readyz(runtime: RuntimeDep) -> Readiness:
    """The model is loaded and the database answers; 503 otherwise."""
    report = health_service.readiness(
        session_factory=runtime.session_factory, engine=runtime.engine, stack=runtime.stack
    )
    return Readiness(
        model=report.model,
        device=report.device,
        active_experts=report.active_experts,
        stack_version=report.stack_version,
        worker=runtime.worker_state(),
    )


@router.get("/metrics", response_class=Response)
def metrics(runtime: RuntimeDep) -> Response:
    """Prometheus text format."""
    body, content_type = runtime.metrics.render()
    return Response(content=body, media_type=content_type)
