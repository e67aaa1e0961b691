"""The append-only audit log, as read by clients."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, Field

from app.domain import AuditAction
from app.schemas.common import PublicModel


class AuditEventPublic(PublicModel):
    id: int
    at: datetime
    actor: str
    action: AuditAction
    edit_id: int | None
    expert_id: int | None
    training_run_id: int | None
    payload: dict[str, Any]


class AuditEventsPublic(BaseModel):
    items: list[AuditEventPublic]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last")


class DailyCountPublic(BaseModel):
    day: date = Field(description="A UTC day")
    count: int


class DailyCountsPublic(BaseModel):
    """Events of one action per UTC day, oldest first, today last; days without one count 0."""

    action: AuditAction
    items: list[DailyCountPublic]
