"""Tokenisation of edits: the target is the continuation of its prompt, with its leading space."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EncodedPair:
    prompt_ids: list[int]
    target_ids: list[int]


def check_text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name} must not be empty or whitespace")
    return value


def encode_pair(tokenizer, prompt: str, target: str, *, eos: bool = False) -> EncodedPair:
    """Token ids of `prompt` and of `target` as its continuation (a space between them)."""
    check_text("prompt", prompt)
    check_text("target", target)
    sep = "" if prompt[-1].isspace() or target[0].isspace() else " "
    prompt_ids = tokenizer(prompt)["input_ids"]
    target_ids = tokenizer(sep + target, add_special_tokens=False)["input_ids"]
    if eos and tokenizer.eos_token_id is not None:
        target_ids = target_ids + [tokenizer.eos_token_id]
    return EncodedPair(list(prompt_ids), list(target_ids))


def subject_token_index(tokenizer, prompt: str, subject: str | None) -> int | None:
    """Index of the prompt token that ends `subject` (first mention, any case), or None.

    None also when that is the prompt's first token: a sequence's first hidden state carries no
    context, so it cannot key anything.
    """
    if not subject or not subject.strip():
        return None
    start = prompt.lower().find(subject.strip().lower())
    if start < 0:
        return None
    end = start + len(subject.strip())
    index = len(tokenizer(prompt[:end])["input_ids"]) - 1
    return index if index > 0 else None
