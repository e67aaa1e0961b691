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
