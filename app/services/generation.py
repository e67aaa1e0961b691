"""Generation through the routed stack (blocking: call it from a worker thread, not the loop)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.config import Settings
from app.errors import GenerationCancelled, GenerationTimeout, InvalidInput
from app.services.checks import check_text
from app.services.params import DEFAULT_MAX_NEW_TOKENS, GenerationDraft
from app.services.stack import LiveStack

if TYPE_CHECKING:
    from app.engine.engine import Engine
    from app.metrics_prom import Metrics


@dataclass(frozen=True)
class Generated:
    prompt: str
    text: str
    expert_name: str | None
    expert_id: int | None
    route_score: float | None
    nearest_edit_id: int | None
    subject_score: float | None
    model: str
    completion_tokens: int
    seconds: float


def generate(
    *,
    engine: Engine,
    stack: LiveStack,
    settings: Settings,
    draft: GenerationDraft,
    metrics: Metrics | None = None,
    cancel: threading.Event | None = None,
) -> Generated:
    """Continue `draft.prompt`; the route is decided once on the prompt and names its expert.

    The generation stops at its next token once `cancel` is set (GenerationCancelled) or after
    settings.generation_timeout_s (GenerationTimeout).
    """
    from app.engine.engine import GenerationParams, StopReason, StopSignal

    prompt = check_text(draft.prompt, field="prompt", max_chars=settings.max_text_chars)
    max_new_tokens = draft.max_new_tokens
    if max_new_tokens is None:
        max_new_tokens = min(DEFAULT_MAX_NEW_TOKENS, settings.max_new_tokens_limit)
    if not 1 <= max_new_tokens <= settings.max_new_tokens_limit:
        raise InvalidInput(
            f"max_new_tokens must be from 1 to {settings.max_new_tokens_limit}, got {max_new_tokens}"
        )
    try:
        engine.validate_prompt(prompt, max_new_tokens)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    params = GenerationParams(
        max_new_tokens=max_new_tokens,
        do_sample=draft.do_sample,
        temperature=draft.temperature,
        top_p=draft.top_p,
        top_k=draft.top_k,
    )
    stop = StopSignal.within(settings.generation_timeout_s, cancel)
    started = time.perf_counter()
    if cancel is not None and cancel.is_set():  # gone while it waited for a thread
        stopped, tokens = StopReason.CANCELLED, 0
    else:
        result = engine.generate(prompt, params, stop=stop)
        stopped, tokens = result.stop_reason, result.completion_tokens
    seconds = time.perf_counter() - started
    if stopped in (StopReason.CANCELLED, StopReason.DEADLINE):
        if metrics is not None:
            metrics.observe_stopped_generation(stopped.value)
        if stopped is StopReason.CANCELLED:
            raise GenerationCancelled(tokens)
        raise GenerationTimeout(settings.generation_timeout_s, tokens)
    if metrics is not None:
        metrics.observe_generation(
            seconds, routed=result.expert_name is not None, tokens=result.completion_tokens
        )
    return Generated(
        prompt=prompt,
        text=result.text,
        expert_name=result.expert_name,
        expert_id=stack.expert_id(result.expert_name),
        route_score=result.route_score,
        nearest_edit_id=result.nearest_edit_id,
        subject_score=result.subject_score,
        model=engine.model_name,
        completion_tokens=result.completion_tokens,
        seconds=seconds,
    )
