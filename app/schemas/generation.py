"""Generation through the routed expert stack."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from app.services.params import GenerationDraft

DEFAULT_MAX_NEW_TOKENS = 32


class GenerateRequest(BaseModel):
    """Greedy by default; set do_sample for sampling with temperature / top_p / top_k."""

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        json_schema_extra={"examples": [{"prompt": "The capital of France is", "max_new_tokens": 16}]},
    )

    prompt: str = Field(description="The text to continue")
    max_new_tokens: int = Field(
        default=DEFAULT_MAX_NEW_TOKENS, ge=1, description="At most the server's max_new_tokens_limit"
    )
    do_sample: bool = False
    temperature: float = Field(default=1.0, gt=0, le=100, description="Used when do_sample")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Used when do_sample")
    top_k: int = Field(default=0, ge=0, le=100_000, description="Used when do_sample; 0: off")

    def to_draft(self) -> GenerationDraft:
        return GenerationDraft(
            prompt=self.prompt,
            max_new_tokens=self.max_new_tokens,
            do_sample=self.do_sample,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
        )


class ExpertRef(BaseModel):
    id: int | None = Field(description="The expert's id (null only if its row vanished meanwhile)")
    name: str


class GenerationPublic(BaseModel):
    prompt: str
    text: str = Field(description="The generated continuation (without the prompt)")
    expert: ExpertRef | None = Field(
        description="The expert that served the request; null: the base model answered"
    )
    route_score: float | None = Field(
        description="Similarity of the prompt to the nearest edit anchor; null with no experts"
    )
    nearest_edit_id: int | None = Field(description="The edit whose anchor is nearest")
    subject_score: float | None = Field(
        default=None,
        description="How well the prompt matched the serving edit's subject; null unless an edit "
        "with a subject served the request",
    )
    model: str
    completion_tokens: int
