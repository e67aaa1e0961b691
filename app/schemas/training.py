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
    steps_done: int = Field(description="Training steps done so far, over all its experts")
    steps_planned: int | None = Field(
        description="Steps done plus the step limit of each expert not trained yet (an upper bound: "
        "an expert stops early once its loss is low enough); null until the run has planned its batches"
    )
    eta_s: float | None = Field(
        description="Seconds left for a running run, estimated from its pace so far and steps_planned "
        "(an upper estimate, as steps_planned is); null when not running or nothing is trained yet"
    )
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
