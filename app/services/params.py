"""Frozen internal parameters that request schemas convert themselves into (no torch, no SQL)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EditDraft:
    """A submitted edit before validation against the settings and the model."""

    prompt: str
    target: str
    subject: str | None = None
    rephrases: tuple[str, ...] = ()


DEFAULT_MAX_NEW_TOKENS = 32


@dataclass(frozen=True)
class GenerationDraft:
    """A generation request before validation against the settings and the model."""

    prompt: str
    max_new_tokens: int | None = None  # None: DEFAULT_MAX_NEW_TOKENS, or the server's limit if lower
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0


@dataclass(frozen=True)
class CompletionDraft:
    """An OpenAI-style completion (`prompt`) or chat completion (`messages`) before validation."""

    prompt: str | None = None
    messages: tuple[tuple[str, str], ...] = ()  # (role, content), oldest first
    max_tokens: int | None = None  # None: as GenerationDraft
    max_completion_tokens: int | None = None  # OpenAI's newer name: wins over max_tokens
    temperature: float = 1.0  # 0 (or below the sampler's floor): greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    edits: bool = True  # False: the base model answers, whatever the experts
