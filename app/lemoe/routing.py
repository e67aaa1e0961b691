"""Per-request routing state, the query probe and the anchor router (pure torch)."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from app.lemoe.config import Pooling
from app.lemoe.expert import Expert, ExpertEntry


@dataclass(frozen=True)
class RouteDecision:
    """Which expert serves one prompt (None: the gate stayed shut) and why."""

    expert_index: int | None
    expert_name: str | None
    score: float | None  # centred cosine to the nearest anchor (None with an empty stack)
    nearest_edit_id: str | None


@dataclass
class RouteState:
    """What the adaptor does during one forward pass / generation; lives in a context variable.

    Modes: `train_expert` set -> that expert on every row (training); `capture_only` -> the
    probe records queries and aborts the pass; otherwise the route is decided once at prefill
    from the prompt tokens (`query_mask`) and held for every generated token.
    """

    query_mask: torch.Tensor | None = None  # (B, T) 1 on prompt tokens
    stack: Sequence[ExpertEntry] = ()
    router: AnchorRouter | None = None
    train_expert: Expert | None = None
    capture_only: bool = False
    forced: Sequence[int | None] | None = None  # bypass routing: expert index per row
    queries: torch.Tensor | None = None
    decisions: list[RouteDecision] | None = None
    groups: list[tuple[int, torch.Tensor]] = field(default_factory=list)


_ROUTE: contextvars.ContextVar[RouteState | None] = contextvars.ContextVar("lemoe_route", default=None)


def current_route() -> RouteState | None:
    return _ROUTE.get()


@contextmanager
def routing(state: RouteState) -> Iterator[RouteState]:
    token = _ROUTE.set(state)
    try:
        yield state
    finally:
        _ROUTE.reset(token)


class QueryCaptured(Exception):
    """Raised by the probe in capture-only mode to stop the forward pass early."""


def pool(x: torch.Tensor, mask: torch.Tensor | None, how: Pooling) -> torch.Tensor:
    """Sentence vector of each row over its prompt tokens."""
    if mask is None:
        mask = torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)
    m = mask.to(x.dtype).unsqueeze(-1)
    mean = (x * m).sum(1) / m.sum(1).clamp(min=1.0)
    last_idx = (mask.long() * torch.arange(mask.shape[1], device=x.device)).argmax(dim=1)
    last = x[torch.arange(x.shape[0], device=x.device), last_idx]
    if how == "mean":
        return mean
    if how == "last":
        return last
    return torch.cat([mean, last], dim=-1)


class AnchorRouter:
    """Routes a query to the expert owning the most similar anchor, behind a locality gate.

    Similarity is cosine after subtracting `center` (the mean query of reference prompts):
    raw hidden states are anisotropic, so uncentred cosines sit near 0.8-0.9 for everything.
    """

    def __init__(self, center: torch.Tensor, threshold: float, supersede_margin: float) -> None:
        self.center = center
        self.threshold = threshold
        self.supersede_margin = supersede_margin

    def normalise(self, q: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(q.float() - self.center.to(q.device), dim=-1)

    def similarities(self, queries: torch.Tensor, stack: Sequence[ExpertEntry]) -> torch.Tensor:
        """(B, n_anchors) centred cosines, anchors in stack order."""
        anchors = torch.cat([e.anchors for e in stack]).to(queries.device)
        return self.normalise(queries) @ self.normalise(anchors).T

    def route(self, queries: torch.Tensor, stack: Sequence[ExpertEntry]) -> list[RouteDecision]:
        if not stack:
            return [RouteDecision(None, None, None, None) for _ in range(queries.shape[0])]
        sims = self.similarities(queries, stack)
        owner = torch.cat(
            [torch.full((len(e.anchors),), i, dtype=torch.long) for i, e in enumerate(stack)]
        ).to(sims.device)
        edit_ids = [eid for e in stack for eid in (e.edit_ids or [""] * len(e.anchors))]
        decisions = []
        for row in sims:
            best = float(row.max())
            # Among near-equal anchors (the same fact edited again) the newest expert wins.
            near = (row >= best - self.supersede_margin).nonzero().flatten()
            pick = int(near[owner[near].argmax()])
            score = float(row[pick])
            if best < self.threshold:
                decisions.append(RouteDecision(None, None, best, edit_ids[int(row.argmax())] or None))
                continue
            idx = int(owner[pick])
            decisions.append(RouteDecision(idx, stack[idx].name, score, edit_ids[pick] or None))
        return decisions


def decide(state: RouteState, x: torch.Tensor, pooling: Pooling) -> None:
    """Compute the prompt queries from `x` and fix the route for the whole request."""
    state.queries = pool(x, state.query_mask, pooling).detach().float()
    if state.capture_only:
        raise QueryCaptured
    if state.forced is not None:
        state.decisions = [
            RouteDecision(i, None if i is None else state.stack[i].name, None, None)
            for i in state.forced
        ]
    elif state.router is None:
        state.decisions = [RouteDecision(None, None, None, None)] * x.shape[0]
    else:
        state.decisions = state.router.route(state.queries, state.stack)
    rows: dict[int, list[int]] = {}
    for r, d in enumerate(state.decisions):
        if d.expert_index is not None:
            rows.setdefault(d.expert_index, []).append(r)
    state.groups = [(i, torch.tensor(r, device=x.device)) for i, r in rows.items()]
