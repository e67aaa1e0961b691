"""A generic stop signal for generation: an event a caller sets and/or a deadline (no HTTP here)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from enum import StrEnum

import torch
from transformers import StoppingCriteria


class StopReason(StrEnum):
    """Why a generation ended: naturally (eos, length, a stop string) or early (cancelled, deadline)."""

    EOS = "eos"
    LENGTH = "length"
    STOP = "stop"  # the text reached one of the caller's stop strings (left out of the text)
    CANCELLED = "cancelled"  # the caller set the event (e.g. its client went away)
    DEADLINE = "deadline"  # the deadline passed first


@dataclass(frozen=True)
class StopSignal:
    """Ends a generation at the next token once `event` is set or `deadline` (time.monotonic()) passes."""

    event: threading.Event | None = None
    deadline: float | None = None

    @classmethod
    def within(cls, seconds: float | None, event: threading.Event | None = None) -> StopSignal:
        """A signal whose deadline is `seconds` from now (None: no deadline)."""
        deadline = None if seconds is None else time.monotonic() + seconds
        return cls(event=event, deadline=deadline)

    def reason(self) -> StopReason | None:
        """CANCELLED or DEADLINE once the generation must stop; None while it may go on."""
        if self.event is not None and self.event.is_set():
            return StopReason.CANCELLED
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return StopReason.DEADLINE
        return None


class StopOnSignal(StoppingCriteria):
    """transformers' hook, asked after every generated token; remembers the first reason it saw."""

    def __init__(self, signal: StopSignal) -> None:
        self.signal = signal
        self.fired: StopReason | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        if self.fired is None:
            self.fired = self.signal.reason()
        return torch.full((input_ids.shape[0],), self.fired is not None, dtype=torch.bool, device=input_ids.device)
