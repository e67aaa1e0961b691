"""The editor's own request types, free of torch so that every layer above can build them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Edit:
    """One fact to teach: `prompt` should be continued by `target`; `edit_id` is the store's id,
    the one type an edit has from the services to the editor."""

    edit_id: int
    prompt: str
    target: str
    rephrases: tuple[str, ...] = ()
    subject: str | None = None  # named in the prompt: the edit then fires only where it is mentioned


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None  # with do_sample: draw from a generator of its own, seeded so
    stop: tuple[str, ...] = ()  # the text ends before the first of these (StopReason.STOP)
