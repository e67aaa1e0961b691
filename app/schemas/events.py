"""GET /v1/events: the data of its server-sent events."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from app.domain import RunStatus
from app.schemas.common import PublicModel

PROGRESS_EVENT = "training_run.progress"


class TrainingRunProgress(PublicModel):
    """The data of a `training_run.progress` event (the fields of GET /v1/training-runs/{id} that move)."""

    id: int
    status: RunStatus
    edits_total: int
    edits_done: int
    steps_done: int
    steps_planned: int | None
    eta_s: float | None = Field(default=None, description="As GET /v1/training-runs/{id} estimates it")
    current_loss: float | None
    heartbeat_at: datetime | None
