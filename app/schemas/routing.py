"""Recent routing decisions of this process, against the gate they met."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from app.schemas.generation import ExpertRef, RouteThresholdsPublic


class RouteScorePublic(BaseModel):
    at: datetime
    score: float = Field(description="Similarity of the prompt to the nearest edit anchor")
    expert: ExpertRef | None = Field(description="The expert that served it; null: the gate stayed shut")
    nearest_edit_id: int | None


class RouteScoresPublic(BaseModel):
    """The last requests this process routed while experts were live (generate, compare and the
    OpenAI routes; kept in memory, oldest first: each replica has its own)."""

    items: list[RouteScorePublic]
    thresholds: RouteThresholdsPublic
