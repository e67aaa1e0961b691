"""Liveness and readiness."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    model: str
    device: str
    database: Literal["ok"] = "ok"
    active_experts: list[str]
    stack_version: int
    worker: str = Field(
        description="disabled | idle | training | standby (another process is the trainer) | stopped"
    )
