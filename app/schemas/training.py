"""Training runs: the worker's passes over the pending edits."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from app.domain import RunStatus, RunTrigger
from app.schemas.common import PublicModel


class TrainingRunPublic(PublicModel):
    id: int
    status: RunStatus
    trigger: RunTrigger
    actor: str
    edits_total: int = Field(description="Edits this run claimed (an estimate while queued)")
    edits_done: int = Field(description="Edits trained so far (applied or failed)")
    current_loss: float | None = Field(description="The latest training loss")
    experts_created: int
    expert_ids: list[int] = Field(description="Experts this run registered")
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None = Field(description="Last sign of life of a running run")
    duration_s: float | None = Field(description="finished_at - started_at; for a running run, the time so far")


class TrainingRunsPublic(BaseModel):
    items: list[TrainingRunPublic]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last")
