"""Generation through the routed stack (blocking: call it from a worker thread, not the loop)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from app.config import Settings
from app.errors import GenerationCancelled, GenerationTimeout, InvalidInput, Overloaded
from app.metrics import RouteSample
from app.schemas.generation import GenerateRequest
from app.schemas.openai import ChatCompletionRequest, CompletionRequest
from app.services.checks import check_storable, check_text
from app.services.stack import LiveStack

if TYPE_CHECKING:
    from app.engine.engine import Engine, Generation, RouteThresholds
    from app.lemoe.types import SamplingParams
    from app.metrics import Metrics


@dataclass(frozen=True)
class Generated:
    prompt: str
    text: str
    expert_name: str | None
    expert_id: int | None
    route_score: float | None
    nearest_edit_id: int | None
    subject_score: float | None
    relation_score: float | None
    span_score: float | None
    model: str
    completion_tokens: int
    seconds: float
    prompt_tokens: int = 0
    finish_reason: str = "length"  # OpenAI's: "stop" (end of sequence or a stop string) or "length"


def generate(
    *,
    engine: Engine,
    stack: LiveStack,
    settings: Settings,
    request: GenerateRequest,
    metrics: Metrics | None = None,
    cancel: threading.Event | None = None,
) -> Generated:
    """Continue `request.prompt`; the route is decided once on the prompt and names its expert.

    The generation stops at its next token once `cancel` is set (GenerationCancelled) or after
    settings.generation_timeout_s (GenerationTimeout).
    """
    prompt, params = _checked(engine, settings, request)
    result, seconds = _run(lambda stop: engine.generate(prompt, params, stop=stop), settings, metrics, cancel)
    return _observed(_generated(result, engine, stack, seconds), metrics)


@dataclass(frozen=True)
class Comparison:
    """One prompt answered by the base model and by the edited stack, and the gate it met."""

    base: Generated
    edited: Generated
    thresholds: RouteThresholds


def compare(
    *,
    engine: Engine,
    stack: LiveStack,
    settings: Settings,
    request: GenerateRequest,
    metrics: Metrics | None = None,
    cancel: threading.Event | None = None,
) -> Comparison:
    """`generate`, and the same prompt and sampling through the base model alone (no expert)."""
    prompt, params = _checked(engine, settings, request)
    base, base_s = _run(lambda stop: engine.complete(prompt, params, edits=False, stop=stop), settings, metrics, cancel)
    edited, edited_s = _run(lambda stop: engine.generate(prompt, params, stop=stop), settings, metrics, cancel)
    return Comparison(
        base=_generated(base, engine, stack, base_s),
        edited=_observed(_generated(edited, engine, stack, edited_s), metrics),
        thresholds=engine.thresholds,
    )


def _observed(generated: Generated, metrics: Metrics | None) -> Generated:
    """Keep the route of a request served while experts were live (its score is None otherwise)."""
    if metrics is not None and generated.route_score is not None:
        metrics.observe_route(
            RouteSample(
                at=datetime.now(UTC),
                score=generated.route_score,
                expert_id=generated.expert_id,
                expert_name=generated.expert_name,
                nearest_edit_id=generated.nearest_edit_id,
            )
        )
    return generated


def _checked(engine: Engine, settings: Settings, request: GenerateRequest) -> tuple[str, SamplingParams]:
    """The request's prompt and sampling, refused (InvalidInput) when they do not fit."""
    prompt = check_text(request.prompt, field="prompt", max_chars=settings.max_text_chars)
    params = request.to_sampling_params(max_new_tokens_limit=settings.max_new_tokens_limit)
    _fits(engine, prompt, params.max_new_tokens)
    return prompt, params


def _fits(engine: Engine, prompt: str, max_new_tokens: int) -> int:
    """The prompt's length in tokens: the one tokenisation of a request's checks."""
    try:
        return engine.validate_prompt(prompt, max_new_tokens)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None


def _run(call, settings: Settings, metrics: Metrics | None, cancel: threading.Event | None):
    """(result, seconds) of `call(stop)`; a generation cut short raises GenerationCancelled or
    GenerationTimeout, and each one is counted in the metrics."""
    from app.engine.engine import StopReason, StopSignal
    from app.engine.scheduler import QueueFull

    stop = StopSignal.within(settings.generation_timeout_s, cancel)
    started = time.perf_counter()
    if cancel is not None and cancel.is_set():  # gone while it waited for a thread
        stopped, tokens = StopReason.CANCELLED, 0
    else:
        try:
            result = call(stop)
        except QueueFull as exc:
            if metrics is not None:
                metrics.observe_stopped_generation("overloaded")
            raise Overloaded(exc.waiting) from None
        stopped, tokens = result.stop_reason, result.completion_tokens
    seconds = time.perf_counter() - started
    if stopped in (StopReason.CANCELLED, StopReason.DEADLINE):
        if metrics is not None:
            metrics.observe_stopped_generation(stopped.value)
        if stopped is StopReason.CANCELLED:
            raise GenerationCancelled(tokens)
        raise GenerationTimeout(settings.generation_timeout_s, tokens)
    if metrics is not None:
        metrics.observe_generation(seconds, routed=result.route.expert_name is not None, tokens=result.completion_tokens)
    return result, seconds


def _generated(result: Generation, engine: Engine, stack: LiveStack, seconds: float, **extra) -> Generated:
    route = result.route
    return Generated(
        prompt=result.prompt,
        text=result.text,
        expert_name=route.expert_name,
        expert_id=stack.expert_id(route.expert_name),
        route_score=route.score,
        nearest_edit_id=route.nearest_edit_id,
        subject_score=route.subject_score,
        relation_score=route.relation_score,
        span_score=route.span_score,
        model=engine.model_name,
        completion_tokens=result.completion_tokens,
        seconds=seconds,
        **extra,
    )


@dataclass(frozen=True)
class PreparedCompletion:
    """A checked OpenAI-style request: the exact prompt, what it is routed on, and how."""

    prompt: str
    route_on: str
    route_kind: str  # "prompt", "last_user_message" or "chat_prompt" (a chat without a user text)
    params: SamplingParams
    prompt_tokens: int
    edits: bool


def prepare_completion(*, engine: Engine, settings: Settings, request: CompletionRequest | ChatCompletionRequest) -> PreparedCompletion:
    """Check an OpenAI-style request (InvalidInput naming the field) before anything is sent:
    `request.prompt`, or the model's chat template around `request.messages`, routed on the last
    user message's content (never on the template's tokens or a system prompt)."""
    if isinstance(request, ChatCompletionRequest):
        messages = tuple((m.role, m.content) for m in request.messages)
        for i, (_, content) in enumerate(messages):
            check_storable(content, field=f"messages[{i}].content", max_chars=settings.max_text_chars)
        if len(messages) > settings.max_chat_messages:
            raise InvalidInput(
                f"messages has {len(messages)} items; at most {settings.max_chat_messages} are allowed",
                param="messages",
            )
        try:
            prompt = engine.chat_prompt(messages)
        except ValueError as exc:
            raise InvalidInput(str(exc), param="messages") from None
        route_on = route_text(messages)
        kind = "last_user_message" if route_on is not None else "chat_prompt"
    else:
        prompt = check_text(request.prompt, field="prompt", max_chars=settings.max_text_chars)
        route_on, kind = prompt, "prompt"
    for i, stop in enumerate(request.stop_texts()):
        check_storable(stop, field=f"stop[{i}]", max_chars=settings.max_text_chars)
    params = request.to_sampling_params(max_new_tokens_limit=settings.max_new_tokens_limit)
    prompt_tokens = _fits(engine, prompt, params.max_new_tokens)
    return PreparedCompletion(prompt, route_on or prompt, kind, params, prompt_tokens, request.lemoe.edits)


def complete(
    *,
    engine: Engine,
    stack: LiveStack,
    settings: Settings,
    prepared: PreparedCompletion,
    metrics: Metrics | None = None,
    cancel: threading.Event | None = None,
    on_text: Callable[[str], None] | None = None,
) -> Generated:
    """Run a prepared completion; the route is decided once, before the first token, and held.
    `on_text` receives the text as it is generated. Stops and limits as `generate`."""
    from app.engine.engine import StopReason

    p = prepared
    result, seconds = _run(
        lambda stop: engine.complete(p.prompt, p.params, route_on=p.route_on, edits=p.edits, stop=stop, on_text=on_text),
        settings,
        metrics,
        cancel,
    )
    finish = "length" if result.stop_reason is StopReason.LENGTH else "stop"
    return _observed(_generated(result, engine, stack, seconds, prompt_tokens=p.prompt_tokens, finish_reason=finish), metrics)


def route_text(messages: tuple[tuple[str, str], ...]) -> str | None:
    """What a chat is routed on: its last user message's content (None without one, or when blank)."""
    for role, content in reversed(messages):
        if role == "user":
            return content if content.strip() else None
    return None
