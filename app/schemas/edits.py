"""Fact edits: what a client submits and what it reads back."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from app.domain import EditStatus, SubjectSource
from app.schemas.common import NON_BLANK_PATTERN, Documented, PublicModel, from_settings

# Every text of an edit: checked by the edit service against the running server's limits.
EditText = Annotated[str, Documented(pattern=NON_BLANK_PATTERN, **from_settings(maxLength="max_text_chars"))]


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

    prompt: EditText = Field(description="The text the model should continue with the new fact")
    target: EditText = Field(
        description="The new continuation (a leading space is added if missing); prompt + target "
        "(and each rephrase + target) must fit the model's context"
    )
    subject: EditText | None = Field(
        default=None,
        description="The entity the fact is about; it must appear in the prompt (any case). "
        "Without one, the training run infers it (a span of the prompt the base model picks)",
    )
    rephrases: Annotated[list[EditText], Documented(**from_settings(maxItems="max_rephrases"))] = Field(
        default_factory=list, description="Other wordings of the prompt, used as training data"
    )


def _body_shape(value: Any) -> str | None:
    if isinstance(value, dict | EditCreate):
        return "one"
    if isinstance(value, list):
        return "many"
    return None


# POST /v1/edits takes one edit object or a JSON array of them.
EditsCreate = Annotated[
    Annotated[EditCreate, Tag("one")]
    | Annotated[
        list[EditCreate],
        Tag("many"),
        Documented(minItems=1, **from_settings(maxItems="max_edits_per_request")),
    ],
    Discriminator(
        _body_shape,
        custom_error_type="edits_body",
        custom_error_message="expected one edit object or a JSON array of edit objects",
    ),
]


class EditPublic(PublicModel):
    id: int
    status: EditStatus = Field(
        description="pending -> planned -> training -> applied | failed; applied -> rolled_back -> applied "
        "(expert deactivated / activated); DELETE: pending | planned | training -> cancelled, applied -> "
        "retracting -> retracted"
    )
    prompt: str
    target: str
    subject: str | None
    subject_source: SubjectSource | None = Field(
        description="Where `subject` came from: `client` (sent with the edit) or `inferred` (the "
        "edit named none; the training run had the base model pick a span of the prompt, see the "
        "edit's `edit.subject_inferred` event); null while the edit has no subject"
    )
    rephrases: list[str]
    expert_id: int | None = Field(description="The expert that holds (or held) this edit")
    training_run_id: int | None = Field(description="The run that last claimed this edit")
    error: str | None = Field(description="Why training failed, when status is failed (or why its retraction failed)")
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
