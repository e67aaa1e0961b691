"""Routing on hand-made token states: unit vectors stand for tokens, so a test states exactly which
tokens match which key."""

from __future__ import annotations

import torch

from app.lemoe.expert import Expert, ExpertEntry
from app.lemoe.routing import AnchorRouter, SubjectKeys

E = torch.eye(6)


def keyed_router(*, relation_threshold: float | None = None, span_threshold: float | None = None) -> AnchorRouter:
    """A router whose subject keys read the states as given (no standardisation) and need no
    sentence similarity (floor -1); the sentence gate is 0.5."""
    keys = SubjectKeys(
        torch.zeros(6),
        torch.ones(6),
        threshold=0.75,
        sentence_floor=-1.0,
        relation_threshold=relation_threshold,
        span_threshold=span_threshold,
    )
    return AnchorRouter(torch.zeros(6), threshold=0.5, supersede_margin=0.02, subject=keys)


def token_states(*tokens: torch.Tensor) -> torch.Tensor:
    """One prompt's (1, T, d) states."""
    return torch.stack(list(tokens))[None]


def keyed_entry(subject: torch.Tensor, length: int, **keys: torch.Tensor) -> ExpertEntry:
    """An expert "keyed" of one edit (id 1) with sentence anchor E[0] and subject key `subject`
    (1, 6), `length` tokens long; `keys`: its other keys by field (relation_anchors,
    subject_span_anchors, subject_token_ids)."""
    return ExpertEntry(
        "keyed", Expert(6, 2), anchors=E[0:1], edit_ids=[1], subject_anchors=subject, subject_lengths=torch.tensor([length]), **keys
    )
