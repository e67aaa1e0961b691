"""One expert: a small FFN (or low-rank pair) added to the wrapped MLP's output when routed."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from app.lemoe.config import ExpertKind


class Expert(nn.Module):
    """`up(act(down(x) + code))`; `up` starts at zero so a fresh expert changes nothing until trained.

    `codes` (one row per edit of the expert, or None): the code of the edit a request was routed
    by, added where the answer is read (`slots`, -1: none; `LemoeConfig.edit_codes`).
    """

    def __init__(
        self, hidden_size: int, expert_hidden: int, kind: ExpertKind = "ffn", *, generator: torch.Generator | None = None, codes: int = 0
    ) -> None:
        super().__init__()
        self.kind = kind
        self.down = nn.Linear(hidden_size, expert_hidden, bias=False)
        self.up = nn.Linear(expert_hidden, hidden_size, bias=False)
        self.codes: nn.Parameter | None
        self.register_parameter("codes", nn.Parameter(torch.zeros(codes, expert_hidden)) if codes else None)
        if generator is not None:  # nn.Linear's own initialisation, drawn from `generator`
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5), generator=generator)
        nn.init.zeros_(self.up.weight)

    @classmethod
    def from_weights(
        cls,
        down: torch.Tensor,
        up: torch.Tensor,
        kind: ExpertKind = "ffn",
        *,
        dtype: torch.dtype = torch.float32,
        codes: torch.Tensor | None = None,
    ) -> Expert:
        """A frozen expert holding these weights (converted to `dtype`), without drawing an
        initialisation first: loading many experts should cost the reading of their files."""
        if down.dim() != 2 or up.dim() != 2 or up.shape != down.shape[::-1]:
            raise ValueError(f"down {tuple(down.shape)} and up {tuple(up.shape)} are not an expert's weights")
        if codes is not None and (codes.dim() != 2 or codes.shape[1] != down.shape[0]):
            raise ValueError(f"codes {tuple(codes.shape)} do not fit an expert of hidden size {down.shape[0]}")
        with torch.device("meta"):
            expert = cls(down.shape[1], down.shape[0], kind)
        expert.down.weight = nn.Parameter(converted(down, dtype), requires_grad=False)
        expert.up.weight = nn.Parameter(converted(up, dtype), requires_grad=False)
        if codes is not None:
            expert.codes = nn.Parameter(converted(codes, dtype), requires_grad=False)
        return expert.eval()

    def forward(self, x: torch.Tensor, slots: torch.Tensor | None = None) -> torch.Tensor:
        h = self.down(x)
        if self.codes is not None and slots is not None:
            code = self.codes[slots.clamp(min=0)] * (slots >= 0).unsqueeze(-1).to(h.dtype)
            h = h + (code.unsqueeze(1) if slots.dim() == 1 else code)
        if self.kind == "ffn":
            h = nn.functional.silu(h)
        return self.up(h)


@dataclass
class ExpertEntry:
    """A trained, frozen expert in the stack, with the anchors that route to it."""

    name: str
    module: Expert
    anchors: torch.Tensor  # (n_edits, d): raw query vectors of the edits it learned
    edit_ids: list[int | None] = field(default_factory=list)  # on disk as strings (config.json)
    meta: dict = field(default_factory=dict)
    # (n_edits, d) subject-layer states at each anchor's subject; a NaN row: no subject key.
    subject_anchors: torch.Tensor | None = None
    # (n_edits, d) relation keys: unit vectors of what each anchor's prompt asks about its subject
    # (`SubjectKeys.relation_vectors`); a NaN row: no relation check. None: made before they existed.
    relation_anchors: torch.Tensor | None = None
    # (n_edits,) how many tokens each anchor's subject spans in its prompt (0: no subject key).
    subject_lengths: torch.Tensor | None = None
    # (n_edits, d) subject-layer states averaged over each anchor's subject tokens (span keys;
    # `SubjectKeys.span_vectors`); a NaN row: no span check. None: made before they existed.
    subject_span_anchors: torch.Tensor | None = None
    # (n_edits, L) the token ids that spell each anchor's subject in its subject view, -1 after
    # them (a row of -1: no token check). None: made before they existed.
    subject_token_ids: torch.Tensor | None = None

    def slot_of(self, edit_id: int | None) -> int:
        """The code slot of `edit_id`: its place among the expert's edits, which come first among
        its anchors, in training order (-1: not one of them, or the expert has no codes)."""
        if edit_id is None or self.module.codes is None or edit_id not in self.edit_ids:
            return -1
        slot = self.edit_ids.index(edit_id)
        return slot if slot < len(self.module.codes) else -1

    @property
    def answer_only(self) -> bool:
        """Whether the expert adds only where the answer is read (`LemoeConfig.expert_positions`);
        experts saved before the setting existed add at every position."""
        return self.meta.get("expert_positions", "all") == "answer"

    @property
    def key(self) -> torch.Tensor:
        """The expert's key: the mean of its edits' anchors."""
        return self.anchors.mean(dim=0)


_NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32}


def converted(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`weight` in `dtype`. Between float16 and float32 on the CPU through numpy, on one thread:
    torch splits a conversion of this size between its threads, and on busy cores each one then
    waits for a descheduled thread (loading 625 float16 experts took 11.8 s instead of 0.9 s)."""
    if weight.dtype == dtype:
        return weight
    if weight.device.type == "cpu" and weight.dtype in _NUMPY_DTYPES and dtype in _NUMPY_DTYPES:
        return torch.from_numpy(weight.detach().numpy().astype(_NUMPY_DTYPES[dtype]))
    return weight.to(dtype)
