"""Experts: one trained adaptor per batch of edits; rollback by deactivating one."""

from __future__ import annotations

from datetime import datetime

from pydantic import AliasChoices, BaseModel, Field

from app.domain import EditStatus, ExpertStatus
from app.schemas.common import PublicModel


class ExpertCheckPublic(BaseModel):
    """The check before the expert went live: greedy answers through the live stack with it,
    against the same stack without it. Each rate is 1.0 when its sample is empty."""

    edits: int = Field(description="Its own edits checked")
    edits_answered: int = Field(description="Of those, answered (the target in the greedy output)")
    edit_rate: float
    missed_edit_ids: list[int]
    locality: int = Field(description="Unrelated prompts of the fixed locality sample")
    locality_kept: int = Field(description="Of those, answered exactly as without it")
    locality_rate: float
    others: int = Field(description="Live edits nearest to it, checked")
    others_kept: int = Field(description="Of those, answered exactly as without it")
    others_rate: float
    changed_edit_ids: list[int] = Field(description="Live edits whose answers it changed")
    seconds: float = Field(description="What the check cost")


class ExpertPublic(PublicModel):
    id: int
    name: str
    status: ExpertStatus
    edit_count: int
    training_run_id: int | None
    final_loss: float | None
    steps: int | None
    sha256: str = Field(description="Checksum of weights.safetensors, checked at every load")
    check: ExpertCheckPublic | None = Field(
        default=None,
        validation_alias=AliasChoices("live_check", "check"),
        description="Its check before going live; null for experts made before the check, or with it off",
    )
    created_at: datetime
    activated_at: datetime | None
    deactivated_at: datetime | None
    replaced_by_id: int | None = Field(
        description="The expert that replaced this one when some of its edits were retracted (it "
        "holds the others and stands in this one's place in the stack); null otherwise"
    )


class ExpertDetail(ExpertPublic):
    edit_ids: list[int] = Field(
        description="The edits this expert holds: those it was trained on, less those moved to the expert that replaced it"
    )


class ExpertsPublic(BaseModel):
    items: list[ExpertPublic]


class ExpertChange(BaseModel):
    """The result of deactivate / activate."""

    expert: ExpertDetail
    changed_edit_ids: list[int] = Field(description="Edits whose status this changed")
    edit_status: EditStatus = Field(description="Their status now (rolled_back or applied)")
    active_experts: list[str] = Field(description="The live stack after the change, oldest first")
