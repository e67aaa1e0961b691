"""Fact edits: what a client submits and what it reads back."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from app.domain import EditStatus
from app.schemas.common import PublicModel
from app.services.params import EditDraft


class EditCreate(BaseModel):
    """One fact: `prompt` should be continued by `target`."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "prompt": "The capital of France is",
                    "target": "Rome",
                    "subject": "France",
                    "rephrases": ["France's capital city is"],
                }
            ]
        },
    )

    prompt: str = Field(description="The text the model should continue with the new fact")
    target: str = Field(description="The new continuation (a leading space is added if missing)")
    subject: str | None = Field(default=None, description="The entity the fact is about")
    rephrases: list[str] = Field(
        default_factory=list, description="Other wordings of the prompt, used as training data"
    )

    def to_draft(self) -> EditDraft:
        return EditDraft(
            prompt=self.prompt, target=self.target, subject=self.subject, rephrases=tuple(self.rephrases)
        )


def _body_shape(value: Any) -> str | None:
    if isinstance(value, dict | EditCreate):
        return "one"
    if isinstance(value, list):
        return "many"
    return None


# POST /v1/edits takes one edit object or a JSON array of them.
EditsCreate = Annotated[
    Annotated[EditCreate, Tag("one")] | Annotated[list[EditCreate], Tag("many")],
    Discriminator(
        _body_shape,
        custom_error_type="edits_body",
        custom_error_message="expected one edit object or a JSON array of edit objects",
    ),
]


class EditPublic(PublicModel):
    id: int
    status: EditStatus
    prompt: str
    target: str
    subject: str | None
    rephrases: list[str]
    expert_id: int | None = Field(description="The expert that holds (or held) this edit")
    training_run_id: int | None = Field(description="The run that last claimed this edit")
    error: str | None = Field(description="Why training failed, when status is failed")
    created_at: datetime
    updated_at: datetime
    applied_at: datetime | None


class EditsAccepted(BaseModel):
    """202: the edits are committed and queued."""

    status: Literal[EditStatus.PENDING] = EditStatus.PENDING
    ids: list[int]
    items: list[EditPublic]


class EditsPublic(BaseModel):
    items: list[EditPublic]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last")
