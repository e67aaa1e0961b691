"""Liveness and readiness."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class QuarantinedExpert(BaseModel):
    """An active expert this process does not serve because its files are missing or corrupt."""

    id: int
    name: str
    path: str = Field(description="Its directory, relative to the data dir")
    reason: str = Field(description="What is wrong with its files")


class Readiness(BaseModel):
    status: Literal["ready", "degraded"] = Field(description="ready, or degraded: serving, but without the experts in quarantined_experts")
    model: str
    device: str
    database: Literal["ok"] = "ok"
    active_experts: list[str] = Field(description="The experts this process serves, oldest first (less any quarantined)")
    stack_version: int = Field(description="The active-stack version this process has loaded")
    database_stack_version: int = Field(description="The active-stack version in the database now")
    stale: bool = Field(
        description="stack_version differs from database_stack_version: this process has not "
        "reloaded yet (it does within LEMOE_STACK_POLL_INTERVAL_S)"
    )
    quarantined_experts: list[QuarantinedExpert] = Field(
        description="Active in the database but not served here: their files are missing or "
        "corrupt. Retried at every reload; `lemoe experts quarantine` takes one out for good"
    )
    worker: str = Field(description="disabled | idle | training | standby (another process is the trainer) | stopped")
