"""Decoding helpers for one generation (no HTTP here): stop strings, a seeded sampler of its own,
and text deltas for streaming that add up to exactly the text `LemoeEditor.generate` returns."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import LogitsProcessor, StoppingCriteria
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.generation.streamers import BaseStreamer


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the first stop string (which is left out), and whether one was found."""
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[: min(found)], True) if found else (text, False)


def completion_text(tokenizer, tokens: Sequence[int]) -> str:
    """The text of generated tokens, as every caller decodes it (streamed or not)."""
    return tokenizer.decode(list(tokens), skip_special_tokens=True)


class StopOnText(StoppingCriteria):
    """Ends a row once its generated text contains one of `stops` (asked after every token)."""

    def __init__(self, tokenizer, stops: Sequence[str], prompt_length: int) -> None:
        self.tokenizer = tokenizer
        self.stops = tuple(s for s in stops if s)
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        done = [cut_at_stop(completion_text(self.tokenizer, row[self.prompt_length :].tolist()), self.stops)[1] for row in input_ids]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class SeededSampler(LogitsProcessor):
    """Samples each next token with a generator of its own (temperature, top-k, top-p as
    transformers applies them), then leaves only that token: run under greedy decoding, a seeded
    request draws the same tokens whatever other requests sample meanwhile."""

    def __init__(self, seed: int, *, temperature: float, top_p: float, top_k: int) -> None:
        self.seed = seed
        self.generator: torch.Generator | None = None
        self.warpers: list[LogitsProcessor] = [TemperatureLogitsWarper(temperature)]
        if top_k > 0:
            self.warpers.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.generator is None:
            self.generator = torch.Generator(device=scores.device)
            self.generator.manual_seed(self.seed)
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        probs = torch.softmax(scores.float(), dim=-1)
        picked = torch.multinomial(probs, 1, generator=self.generator)
        only = torch.full_like(scores, float("-inf"))
        return only.scatter_(1, picked, 0.0)


class TextDeltas(BaseStreamer):
    """Hands on the text of one row as it is generated, in pieces that add up to the final text.

    transformers calls `put` with the prompt first, then each new token. A piece is held back while
    it ends in an incomplete character or could be the start of a stop string; the text ends at the
    end-of-sequence token or before a stop string, as `LemoeEditor.generate` cuts it.
    """

    def __init__(self, tokenizer, on_text: Callable[[str], None], *, stops: Sequence[str] = (), eos: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.on_text = on_text
        self.stops = tuple(s for s in stops if s)
        self.eos = eos
        self.tokens: list[int] = []
        self.sent = 0
        self.finished = False
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        if self.finished:
            return
        for token in value.flatten().tolist():
            if token == self.eos:
                self.finished = True
                break
            self.tokens.append(token)
        self._send(final=self.finished)

    def end(self) -> None:
        self._send(final=True)
        self.finished = True

    def _send(self, *, final: bool) -> None:
        text, stopped = cut_at_stop(completion_text(self.tokenizer, self.tokens), self.stops)
        if stopped:
            final = self.finished = True
        ready = len(text)
        if not final:
            if text.endswith("\ufffd"):  # a character whose bytes are not all there yet
                ready = len(text.rstrip("\ufffd"))
            # Hold back what may still become a stop string.
            for stop in self.stops:
                for k in range(min(len(stop) - 1, ready), 0, -1):
                    if text[:ready].endswith(stop[:k]):
                        ready -= k
                        break
        if ready > self.sent:
            self.on_text(text[self.sent : ready])
            self.sent = ready
