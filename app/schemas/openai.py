"""OpenAI-compatible shapes: /v1/models, /v1/completions, /v1/chat/completions (no torch here).

Requests take OpenAI's names and ranges; what this server cannot do (n > 1, logprobs, penalties)
is refused with a 400 naming the field rather than silently ignored. `lemoe` is the extension
field: in a request, `{"edits": false}` answers with the base model; in a response, the routing
facts of the answer.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from app.lemoe.types import SamplingParams
from app.schemas.common import NO_NUL_PATTERN, Documented, from_settings
from app.schemas.generation import AS_JSON_INTEGER, DEFAULT_MAX_NEW_TOKENS, ExpertRef, Prompt, max_new_tokens

MAX_STOP_STRINGS = 4  # as OpenAI
# Below this a temperature samples as greedily as greedy decoding (and overflows float32 logits).
MIN_SAMPLING_TEMPERATURE = 0.01
# top_p 0 (OpenAI allows it) keeps only the most likely token, as this does.
MIN_TOP_P = 1e-9
# Integers JSON numbers carry exactly everywhere (torch's generators take -2**63 .. 2**64 - 1).
MAX_SEED = 2**53 - 1
MIN_SEED = -(2**53 - 1)

StopText = Annotated[str, Field(min_length=1), Documented(pattern=NO_NUL_PATTERN, **from_settings(maxLength="max_text_chars"))]


class LemoeOptions(BaseModel):
    """The extension field of a request."""

    model_config = ConfigDict(extra="forbid", strict=True)

    edits: bool = Field(default=True, description="false: answer with the base model, whatever the experts (A/B checks)")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool = Field(default=False, description="Send one more chunk before [DONE] with `usage` and no choices")


class _Sampling(BaseModel):
    """What both OpenAI requests share."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    model: str = Field(
        max_length=256,
        description="Any name: this server serves one model (GET /v1/models), named in the answer",
    )
    max_tokens: Annotated[
        int | None,
        Field(
            ge=1,
            description=f"At most the server's max_new_tokens_limit; default {DEFAULT_MAX_NEW_TOKENS}, or that limit if it is lower",
        ),
        AS_JSON_INTEGER,
        Documented(**from_settings(maximum="max_new_tokens_limit")),
    ] = None
    temperature: float = Field(
        default=1.0, ge=0, le=2, description="0: greedy (so is anything below 0.01); default 1 (sampling), as OpenAI"
    )
    top_p: float = Field(default=1.0, ge=0, le=1)
    stop: (
        Annotated[
            Annotated[StopText, Tag("one")] | Annotated[list[StopText], Field(max_length=MAX_STOP_STRINGS), Tag("many")],
            Discriminator(lambda v: "one" if isinstance(v, str) else "many"),
        ]
        | None
    ) = Field(default=None, description="A string or up to 4; the text ends before the first one generated")
    seed: Annotated[int | None, Field(ge=MIN_SEED, le=MAX_SEED), AS_JSON_INTEGER] = Field(
        default=None, description="With sampling: the same seed and request give the same text"
    )
    n: Annotated[int, Field(ge=1, le=1), AS_JSON_INTEGER] = Field(default=1, description="Only 1")
    stream: bool = Field(default=False, description="Server-sent events: `data: {chunk}` lines, then `data: [DONE]`")
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256, description="Accepted and ignored")
    lemoe: LemoeOptions = Field(default_factory=LemoeOptions)

    def stop_texts(self) -> tuple[str, ...]:
        return () if self.stop is None else (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def to_sampling_params(self, *, max_new_tokens_limit: int) -> SamplingParams:
        """The editor's parameters in OpenAI's reading (temperature 0: greedy), with the server's
        limit applied (InvalidInput naming max_tokens or max_completion_tokens beyond it)."""
        max_tokens = max_new_tokens(self.max_tokens, max_new_tokens_limit, "max_tokens")
        newer = getattr(self, "max_completion_tokens", None)  # chat only: wins over max_tokens
        if newer is not None:
            max_tokens = max_new_tokens(newer, max_new_tokens_limit, "max_completion_tokens")
        greedy = self.temperature < MIN_SAMPLING_TEMPERATURE
        return SamplingParams(
            max_new_tokens=max_tokens,
            do_sample=not greedy,
            temperature=1.0 if greedy else self.temperature,
            top_p=max(self.top_p, MIN_TOP_P),
            seed=self.seed,
            stop=self.stop_texts(),
        )


class CompletionRequest(_Sampling):
    """POST /v1/completions: continue `prompt`, routed on it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"model": "SmolLM2-135M-Instruct", "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}]
        },
    )

    prompt: Prompt


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[
        str,
        Documented(pattern=NO_NUL_PATTERN, **from_settings(maxLength="max_text_chars")),
        Field(description="Text (at most the server's max_text_chars characters)"),
    ]
    name: str | None = Field(default=None, max_length=256, description="Accepted and ignored")


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions: the model's chat template around `messages`, routed on the last
    user message's content (not the template or a system prompt)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "SmolLM2-135M-Instruct",
                    "max_tokens": 16,
                    "temperature": 0,
                    "messages": [{"role": "user", "content": "What is the capital of France?"}],
                }
            ]
        },
    )

    messages: Annotated[
        list[ChatMessage],
        Field(min_length=1, description="Oldest first; at most the server's max_chat_messages"),
        Documented(**from_settings(maxItems="max_chat_messages")),
    ]
    max_completion_tokens: Annotated[
        int | None, Field(ge=1), AS_JSON_INTEGER, Documented(**from_settings(maximum="max_new_tokens_limit"))
    ] = Field(default=None, description="OpenAI's newer name for max_tokens; wins when both are given")


# --- responses --------------------------------------------------------------------------------


class LemoeRouting(BaseModel):
    """The extension field of a response: how the answer was routed."""

    expert: ExpertRef | None = Field(description="The expert that served it; null: the base model answered")
    route_score: float | None = Field(description="Similarity of the routed text to the nearest edit anchor")
    nearest_edit_id: int | None
    subject_score: float | None = None
    relation_score: float | None = Field(
        default=None, description="How close the routed text asks what the serving edit asks about its subject"
    )
    span_score: float | None = Field(default=None, description="How well the routed text matched the serving edit's whole subject")
    edits: bool = Field(description="Whether the experts were consulted (false when the request turned them off)")
    route_text: Literal["prompt", "last_user_message", "chat_prompt"] = Field(description="What the route was decided on")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


FinishReason = Literal["stop", "length"]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: FinishReason | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    lemoe: LemoeRouting


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    lemoe: LemoeRouting


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "lemoe-server"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error (4xx) or server_error (5xx)")
    param: str | None = Field(description="The request field at fault, where known")
    code: str | None = Field(description="This server's error type, e.g. invalid_input, not_ready")


class OpenAIErrorResponse(BaseModel):
    """The error body of the OpenAI-compatible routes (OpenAI's shape)."""

    error: OpenAIErrorDetail
