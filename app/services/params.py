"""The OpenAI-style request, in the one shape both of its schemas convert into (no torch, no SQL)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_NEW_TOKENS = 32


@dataclass(frozen=True)
class CompletionDraft:
    """An OpenAI-style completion (`prompt`) or chat completion (`messages`) before validation."""

    prompt: str | None = None
    messages: tuple[tuple[str, str], ...] = ()  # (role, content), oldest first
    max_tokens: int | None = None  # None: DEFAULT_MAX_NEW_TOKENS, or the server's limit if lower
    max_completion_tokens: int | None = None  # OpenAI's newer name: wins over max_tokens
    temperature: float = 1.0  # 0 (or below the sampler's floor): greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    edits: bool = True  # False: the base model answers, whatever the experts
