"""Generation through the routed expert stack."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from app.errors import InvalidInput
from app.lemoe.types import SamplingParams
from app.schemas.common import NON_BLANK_PATTERN, Documented, from_settings

DEFAULT_MAX_NEW_TOKENS = 32

# Below this, logits / temperature overflows float32 for ordinary logits (inf -> NaN
# probabilities); sampling that cold is greedy decoding anyway (do_sample=false).
MIN_TEMPERATURE = 0.01
MAX_TEMPERATURE = 100.0
MAX_TOP_K = 100_000


def _json_integer(value: Any) -> Any:
    """JSON has one number type: 2.0 is the integer 2 (as JSON Schema counts it), 2.5 is none."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# Put after the bounds (`Annotated[int, Field(ge=1), AS_JSON_INTEGER]`: so they stay in the
# document as minimum/maximum); a boolean is no integer (strict mode refuses it, and text).
AS_JSON_INTEGER = BeforeValidator(_json_integer)

# The prompt: checked by the generation service against the running server's limits.
Prompt = Annotated[
    str,
    Documented(pattern=NON_BLANK_PATTERN, **from_settings(maxLength="max_text_chars")),
    Field(
        description="The text to continue: not blank, no NUL, at most the server's max_text_chars "
        "characters, and with max_new_tokens within the model's context"
    ),
]


class GenerateRequest(BaseModel):
    """Greedy by default; set do_sample for sampling with temperature / top_p / top_k.

    Strict as JSON: `true` is no integer, `"5"` no number (query strings: see GenerateQuery).
    """

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        allow_inf_nan=False,
        json_schema_extra={"examples": [{"prompt": "The capital of France is", "max_new_tokens": 16}]},
    )

    prompt: Prompt
    max_new_tokens: Annotated[
        int,
        Field(
            ge=1,
            description=f"At most the server's max_new_tokens_limit; default {DEFAULT_MAX_NEW_TOKENS}, or that limit if it is lower",
        ),
        AS_JSON_INTEGER,
        Documented(**from_settings(maximum="max_new_tokens_limit")),
    ] = DEFAULT_MAX_NEW_TOKENS
    do_sample: bool = False
    temperature: float = Field(
        default=1.0,
        ge=MIN_TEMPERATURE,
        le=MAX_TEMPERATURE,
        description=f"Used when do_sample; {MIN_TEMPERATURE} to {MAX_TEMPERATURE:g} (for colder, sample greedily: do_sample=false)",
    )
    top_p: float = Field(default=1.0, gt=0, le=1, description="Used when do_sample")
    top_k: Annotated[int, Field(ge=0, le=MAX_TOP_K), AS_JSON_INTEGER] = Field(default=0, description="Used when do_sample; 0: off")

    def to_sampling_params(self, *, max_new_tokens_limit: int) -> SamplingParams:
        """The editor's parameters, with the server's limit applied (InvalidInput beyond it)."""
        # Not given: the server's default (DEFAULT_MAX_NEW_TOKENS, or its limit if lower).
        given = self.max_new_tokens if "max_new_tokens" in self.model_fields_set else None
        return SamplingParams(
            max_new_tokens=max_new_tokens(given, max_new_tokens_limit, "max_new_tokens"),
            do_sample=self.do_sample,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
        )


def max_new_tokens(value: int | None, limit: int, name: str) -> int:
    """`value` within the server's `limit` (InvalidInput naming `name` beyond it); None: the default."""
    if value is None:
        return min(DEFAULT_MAX_NEW_TOKENS, limit)
    if not 1 <= value <= limit:
        raise InvalidInput(f"{name} must be from 1 to {limit}, got {value}", param=name)
    return value


class GenerateQuery(GenerateRequest):
    """The same fields as query parameters: there every value is text, parsed as its type."""

    model_config = ConfigDict(strict=False)


class ExpertRef(BaseModel):
    id: int | None = Field(description="The expert's id (null only if its row vanished meanwhile)")
    name: str


class GenerationPublic(BaseModel):
    prompt: str
    text: str = Field(description="The generated continuation (without the prompt)")
    expert: ExpertRef | None = Field(description="The expert that served the request; null: the base model answered")
    route_score: float | None = Field(description="Similarity of the prompt to the nearest edit anchor; null with no experts")
    nearest_edit_id: int | None = Field(description="The edit whose anchor is nearest")
    subject_score: float | None = Field(
        default=None,
        description="How well the prompt matched the serving edit's subject; null unless an edit with a subject served the request",
    )
    relation_score: float | None = Field(
        default=None,
        description="How close the prompt asks what the serving edit asks about its subject (relation key); "
        "null unless such an edit served the request",
    )
    span_score: float | None = Field(
        default=None,
        description="How well the prompt's tokens ending at the subject match matched the serving edit's whole subject "
        "(span key); null unless an edit with a span key served the request",
    )
    model: str
    completion_tokens: int


class RouteThresholdsPublic(BaseModel):
    """What a prompt must reach for an expert to serve it."""

    gate: float = Field(description="The route score an edit without a subject needs (LEMOE_GATE_THRESHOLD)")
    subject: float | None = Field(
        description="The subject match an edit with a subject needs (instead of the gate); null: subject keys are off"
    )
    relation: float | None = Field(description="The relation match such an edit also needs; null: no relation check")
    span: float | None = Field(default=None, description="The whole-subject match such an edit also needs; null: no span check")
    sentence_floor: float | None = Field(description="The route score such an edit also needs; null: subject keys are off")


class BaseAnswer(BaseModel):
    text: str = Field(description="The base model's continuation: no expert, whatever the route")
    completion_tokens: int


class GenerationComparison(BaseModel):
    """One prompt through the base model and through the edited stack, with the routing facts."""

    prompt: str
    base: BaseAnswer
    edited: GenerationPublic = Field(description="As POST /v1/generate answers")
    changed: bool = Field(description="The edited stack's text differs from the base model's")
    thresholds: RouteThresholdsPublic
