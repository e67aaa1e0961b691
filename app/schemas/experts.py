"""Experts: one trained adaptor per batch of edits; rollback by deactivating one."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from app.domain import EditStatus, ExpertStatus
from app.schemas.common import PublicModel


class ExpertPublic(PublicModel):
    id: int
    name: str
    status: ExpertStatus
    edit_count: int
    training_run_id: int | None
    final_loss: float | None
    steps: int | None
    sha256: str = Field(description="Checksum of weights.safetensors, checked at every load")
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
