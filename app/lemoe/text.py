"""Tokenisation of edits: the target is the continuation of its prompt, with its leading space."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch


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


def encode_batch(tokenizer, texts: Sequence[str], *, side: str = "right") -> dict[str, torch.Tensor]:
    """`input_ids` and `attention_mask` of `texts`, padded on `side` with the pad token.

    Padded here, not by the tokenizer: asking a fast tokenizer to pad switches padding on in its
    shared Rust backend until the call ends, and a call from another thread meanwhile (training
    beside serving) switches it off again under it ("Unable to create tensor ...").
    """
    rows = tokenizer(list(texts))["input_ids"]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return {"input_ids": ids, "attention_mask": mask}


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


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_prompt(tokenizer, messages: Sequence[tuple[str, str]]) -> str:
    """The model's own chat template around (role, content) messages, ready for the assistant's
    reply: how the server asks a chat, and how an edit is trained in chat form."""
    if not has_chat_template(tokenizer):
        raise ValueError("the model has no chat template")
    return tokenizer.apply_chat_template(
        [{"role": role, "content": content} for role, content in messages], tokenize=False, add_generation_prompt=True
    )


@dataclass(frozen=True)
class SubjectView:
    """The text whose subject-layer states key and match subjects, and its first matchable token."""

    text: str
    start: int  # character offset of the prompt in `text`
    first: int  # tokens before this one (the fixed context, or the first token) never match
    # Tokens before this one are not read for the relation: a sentence before the prompt's last
    # one ("A Marañón Week is held since 1990. Howard Glacier is in") says nothing of what it asks.
    last_sentence: int = 0
    ids: tuple[int, ...] = ()  # its token ids: a subject's tokens are compared with them (the token check)
    # Per token: whether a word ends there (the next token does not go on with a letter or digit:
    # " France" ends one before "'s", not before "ville").
    word_ends: tuple[bool, ...] = ()


def subject_view(tokenizer, prompt: str, *, context: str = "", lowercase: bool = False) -> SubjectView:
    """`prompt` as subject matching reads it, for edit keys and request tokens alike.

    With a `context` the prompt follows it after one space: its first word is no longer the
    sequence's first token and is tokenised with its leading space, as it would be mid-sentence.
    Without one, the prompt's first token is excluded (a first hidden state has no context).
    """
    head = f"{context} " if context else ""
    body = prompt.strip() if context else prompt
    text = head + body
    if lowercase:
        head, text = head.lower(), text.lower()
    start = len(head)
    before = len(tokenizer(text[:start].rstrip())["input_ids"]) if context else len(tokenizer("")["input_ids"]) + 1
    ends = [m.end() for m in _SENTENCE_END.finditer(body)]
    last_sentence = len(tokenizer(text[: start + ends[-1]].rstrip())["input_ids"]) if ends else 0
    ids = tokenizer(text)["input_ids"]
    goes_on = [piece[:1].isalnum() for piece in tokenizer.batch_decode([[i] for i in ids])]
    return SubjectView(text, start, before, max(before, last_sentence), tuple(ids), tuple(not g for g in goes_on[1:]) + (True,))


# A sentence ends at . ! or ? after a lower-case letter or digit, before a capital: "U.S. Navy" and
# "3.5 m" go on.
_SENTENCE_END = re.compile(r"(?<=[a-z0-9)\]\"'][.!?])\s+(?=[A-Z\"'“])")


def subject_token_span(
    tokenizer, prompt: str, subject: str | None, *, context: str = "", lowercase: bool = False
) -> tuple[int, int] | None:
    """(first, last) index, in `subject_view(prompt)`'s tokens, of the tokens that spell `subject`
    (first mention in the prompt, any case), or None: no subject, not in the prompt, or ending on
    a token that never matches (the first one, when there is no context).
    """
    if not subject or not subject.strip():
        return None
    view = subject_view(tokenizer, prompt, context=context, lowercase=lowercase)
    needle = subject.strip().lower()
    start = view.text.lower().find(needle, view.start)
    if start < 0:
        return None
    end = start + len(needle)
    last = len(tokenizer(view.text[:end])["input_ids"]) - 1
    if last < view.first:
        return None
    # The space before a word belongs to the word's first token, so the text before it is read stripped.
    first = len(tokenizer(view.text[:start].rstrip())["input_ids"]) if view.text[:start].strip() else 0
    return max(min(first, last), view.first), last


def subject_token_index(tokenizer, prompt: str, subject: str | None, *, context: str = "", lowercase: bool = False) -> int | None:
    """Index, in `subject_view(prompt)`'s tokens, of the token that ends `subject` (see
    `subject_token_span`), or None."""
    span = subject_token_span(tokenizer, prompt, subject, context=context, lowercase=lowercase)
    return None if span is None else span[1]


def token_rarity(ids: torch.Tensor) -> torch.Tensor:
    """How much each token (by id) says about what a prompt asks, read from the tokenizer's own
    merge order: a BPE vocabulary numbers its tokens roughly from the most frequent, so
    ln(id / 100), at least 0.05 (SmolLM2: " the", " is" about 1, " born" 3.7, " educated" 4.8).
    Relation keys weighted so tell other questions about a subject from rewordings of the edit's
    better than a plain mean, which "What ... did ... have?" dominates (docs/BENCHMARKS.md)."""
    return torch.log(ids.clamp(min=1).float() / 100).clamp(min=0.05)
