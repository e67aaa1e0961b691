"""Per-request routing state, the query probe and the anchor router (pure torch)."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterator, Sequence
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
    nearest_edit_id: int | None
    subject_score: float | None = None  # the chosen anchor's subject match, if it has a subject key
    relation_score: float | None = None  # what the prompt asks about that subject against the edit's (relation key)
    span_score: float | None = None  # the whole subject's match where its last token matched (span key)


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
    forced: Sequence[RouteDecision] | None = None  # bypass routing: each row's decision as given
    queries: torch.Tensor | None = None
    subject_states: torch.Tensor | None = None  # (B, T, d) subject-layer states (LemoeEditor.subject_states)
    subject_mask: torch.Tensor | None = None  # (B, T) which of those tokens may match a subject
    relation_weights: torch.Tensor | None = None  # (B, T) what each token counts in the relation (LemoeEditor.relation_weights)
    subject_tokens: SubjectTokens | None = None  # those tokens' ids (LemoeEditor.subject_tokens)
    decisions: list[RouteDecision] | None = None
    groups: list[tuple[int, torch.Tensor, torch.Tensor]] = field(default_factory=list)  # expert, rows, code slots


@dataclass(frozen=True)
class SubjectTokens:
    """The tokens of prompts' subject views, beside their states: (B, T) ids, -1 after each
    prompt's, and (B, T) whether a word ends at each (the next token does not go on with a letter
    or digit)."""

    ids: torch.Tensor
    word_ends: torch.Tensor


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
    last = x[torch.arange(x.shape[0], device=x.device), last_positions(mask)]
    if how == "mean":
        return mean
    if how == "last":
        return last
    return torch.cat([mean, last], dim=-1)


def last_positions(mask: torch.Tensor) -> torch.Tensor:
    """(B,) the position of each row's last masked-in token (its prompt's last, left- or right-padded)."""
    return (mask.long() * torch.arange(mask.shape[1], device=mask.device)).argmax(dim=1)


class SubjectKeys:
    """Token-level subject matching (does a prompt mention an edit's subject?) and relation
    matching (does it ask what the edit's prompt asks about it?).

    A subject anchor is the edit prompt's hidden state at its subject's last token; a prompt's
    score is the best cosine over its matchable tokens (`subject_view`: never a sequence's first
    token, which carries no context). A relation anchor is the mean of the edit prompt's other
    matchable tokens (its subject's left out); a prompt is compared on its tokens outside the span
    that matched the subject. A span anchor is the mean of the subject's tokens; a prompt is
    compared on as many tokens, ending where the subject matched. All read
    `LemoeEditor.subject_states`. Every dimension is
    standardised on reference-prompt tokens first: a few dimensions carry massive activations
    that make raw cosines ~1 between unrelated tokens.
    """

    def __init__(
        self,
        mean: torch.Tensor,
        std: torch.Tensor,
        threshold: float,
        sentence_floor: float,
        relation_threshold: float | None = None,
        span_threshold: float | None = None,
        token_check: bool = False,
    ) -> None:
        self.mean = mean
        self.std = std
        self.threshold = threshold
        self.sentence_floor = sentence_floor
        self.relation_threshold = relation_threshold  # None: no relation check
        self.span_threshold = span_threshold  # None: no span check
        self.token_check = token_check  # the matched tokens must spell the subject (where its ids are known)

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean.to(x.device)) / self.std.to(x.device)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.standardise(x), dim=-1)

    def scores(self, states: torch.Tensor, mask: torch.Tensor | None, anchors: torch.Tensor) -> SubjectMatch:
        """Per prompt and anchor, the best token cosine and where it is.

        `mask` (B, T): the tokens that may match (None: all). `anchors` rows of NaN mean "no
        subject key"; those score -2 (never a match).
        """
        keyed = ~torch.isnan(anchors).any(dim=1)
        return self.scores_normalised(states, mask, self.normalise(torch.nan_to_num(anchors.to(states.device))), keyed)

    def scores_normalised(self, states: torch.Tensor, mask: torch.Tensor | None, unit: torch.Tensor, keyed: torch.Tensor) -> SubjectMatch:
        """`scores` against anchors already normalised (`unit`, e.g. an AnchorIndex's) whose
        rows with a key are `keyed`."""
        sims = torch.einsum("btd,nd->btn", self.normalise(states), unit.to(states.device))
        valid = torch.ones(states.shape[:2], dtype=torch.bool, device=states.device) if mask is None else mask.bool()
        best = sims.masked_fill(~valid.unsqueeze(-1), -2.0).max(dim=1)
        return SubjectMatch(keyed, best.values.masked_fill(~keyed.to(best.values.device), -2.0), best.indices)

    def relation_vectors(
        self, states: torch.Tensor, mask: torch.Tensor | None, rows: torch.Tensor, last: torch.Tensor, length: torch.Tensor
    ) -> torch.Tensor:
        """(P, d) unit vectors: for each (row, span) pair, the standardised mean of that row's
        matchable tokens outside tokens last-length+1..last (its subject), weighted by `mask`
        (`LemoeEditor.relation_weights`). A prompt that is all subject gives a zero vector, which
        matches nothing."""
        inside, total = self._span_sums(states, mask, rows, last, length)
        return torch.nn.functional.normalize(total - inside, dim=-1)

    def span_vectors(
        self, states: torch.Tensor, mask: torch.Tensor | None, rows: torch.Tensor, last: torch.Tensor, length: torch.Tensor
    ) -> torch.Tensor:
        """(P, d) unit vectors: for each (row, span) pair, the standardised mean of that row's
        matchable tokens last-length+1..last (where a subject of that length would lie)."""
        inside, _ = self._span_sums(states, mask, rows, last, length)
        return torch.nn.functional.normalize(inside, dim=-1)

    def _span_sums(
        self, states: torch.Tensor, mask: torch.Tensor | None, rows: torch.Tensor, last: torch.Tensor, length: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """For each (row, span) pair: the sum of the row's standardised matchable tokens inside
        last-length+1..last, and over the whole row, each token times its `mask` value."""
        weight = torch.ones(states.shape[:2], device=states.device) if mask is None else mask.float()
        z = self.standardise(states) * weight.unsqueeze(-1)
        running = torch.cat([torch.zeros_like(z[:, :1]), z.cumsum(dim=1)], dim=1)  # (B, T+1, d)
        rows, last, length = rows.to(z.device), last.to(z.device), length.to(z.device)
        first = (last - length + 1).clamp(min=0)
        return running[rows, last + 1] - running[rows, first], running[rows, -1]


@dataclass(frozen=True)
class SubjectMatch:
    keyed: torch.Tensor  # (n,) which anchors have a subject key
    scores: torch.Tensor  # (B, n) best token cosine (-2: no key)
    where: torch.Tensor  # (B, n) index of that token


def subject_anchor_matrix(stack: Sequence[ExpertEntry], dim: int) -> torch.Tensor:
    """Every anchor's subject key in stack order (NaN rows where there is none)."""
    return _anchor_rows(stack, dim, "subject_anchors")


def span_anchor_matrix(stack: Sequence[ExpertEntry], dim: int) -> torch.Tensor:
    """Every anchor's subject span key in stack order (NaN rows where there is none)."""
    return _anchor_rows(stack, dim, "subject_span_anchors")


def relation_anchor_matrix(stack: Sequence[ExpertEntry], dim: int) -> torch.Tensor:
    """Every anchor's relation key in stack order (NaN rows where there is none)."""
    return _anchor_rows(stack, dim, "relation_anchors")


def subject_token_matrix(stack: Sequence[ExpertEntry]) -> torch.Tensor:
    """Every anchor's subject token ids in stack order, -1 after them (rows of -1: none known)."""
    return _padded_ids([e.subject_token_ids if e.subject_token_ids is not None else torch.full((len(e.anchors), 1), -1) for e in stack])


def _padded_ids(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    width = max(p.shape[1] for p in parts)
    return torch.cat([torch.nn.functional.pad(p.long().cpu(), (0, width - p.shape[1]), value=-1) for p in parts])


def subject_lengths(stack: Sequence[ExpertEntry]) -> torch.Tensor:
    """Every anchor's subject length in tokens, in stack order (0 where unknown)."""
    return torch.cat(
        [torch.zeros(len(e.anchors), dtype=torch.long) if e.subject_lengths is None else e.subject_lengths.long().cpu() for e in stack]
    )


def _anchor_rows(stack: Sequence[ExpertEntry], dim: int, attr: str) -> torch.Tensor:
    rows = []
    for e in stack:
        keys = getattr(e, attr)
        rows.append(torch.full((len(e.anchors), dim), float("nan"), device=e.anchors.device) if keys is None else keys.float())
    return torch.cat(rows)


@dataclass(frozen=True)
class AnchorIndex:
    """Every anchor of one stack snapshot, concatenated and normalised once.

    Routing reads all anchors at every request; a stack snapshot (a tuple of frozen experts)
    never changes, so what depends only on it is built once here instead of per request.
    """

    sentence: torch.Tensor  # (n, d) centred, unit sentence anchors (AnchorRouter.normalise)
    owners: torch.Tensor  # (n,) the stack index of each anchor's expert
    edit_ids: list[int | None]
    keyed: torch.Tensor  # (n,) which anchors have a subject key
    any_keyed: bool
    # With subject keys on (else None): (n, d) standardised unit subject keys (rows without a key:
    # meaningless, never read), (n, d) relation keys (NaN rows: none), which anchors have one,
    # (n,) subject lengths in tokens, (n, d) standardised unit span keys and which anchors have one.
    subject: torch.Tensor | None
    relation: torch.Tensor | None
    relation_keyed: torch.Tensor | None
    lengths: torch.Tensor | None
    span: torch.Tensor | None = None
    span_keyed: torch.Tensor | None = None
    tokens: torch.Tensor | None = None  # (n, L) subject token ids, -1 after them (subject_token_matrix)

    @property
    def size(self) -> int:
        return len(self.edit_ids)

    @property
    def nbytes(self) -> int:
        """Bytes this index holds beyond the experts' own tensors."""
        tensors = (
            self.sentence,
            self.owners,
            self.keyed,
            self.subject,
            self.relation,
            self.relation_keyed,
            self.lengths,
            self.span,
            self.span_keyed,
            self.tokens,
        )
        return sum(t.element_size() * t.nelement() for t in tensors if t is not None)

    def extended(self, more: AnchorIndex, experts_before: int) -> AnchorIndex:
        """This index followed by `more` (the index of the experts added after this one's)."""

        def cat(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
            return None if a is None or b is None else torch.cat([a, b.to(a.device)])

        return AnchorIndex(
            sentence=torch.cat([self.sentence, more.sentence.to(self.sentence.device)]),
            owners=torch.cat([self.owners, more.owners + experts_before]),
            edit_ids=self.edit_ids + more.edit_ids,
            keyed=torch.cat([self.keyed, more.keyed]),
            any_keyed=self.any_keyed or more.any_keyed,
            subject=cat(self.subject, more.subject),
            relation=cat(self.relation, more.relation),
            relation_keyed=cat(self.relation_keyed, more.relation_keyed),
            lengths=cat(self.lengths, more.lengths),
            span=cat(self.span, more.span),
            span_keyed=cat(self.span_keyed, more.span_keyed),
            tokens=None if self.tokens is None or more.tokens is None else _padded_ids([self.tokens, more.tokens]),
        )


class AnchorRouter:
    """Routes a query to the expert owning the most similar anchor, behind a locality gate.

    Similarity is cosine after subtracting `center` (the mean query of reference prompts):
    raw hidden states are anisotropic, so uncentred cosines sit near 0.8-0.9 for everything.
    An anchor without a subject key may fire when its sentence similarity clears `threshold`; an
    anchor with one, when the prompt mentions that subject and its sentence similarity clears the
    lower `subject.sentence_floor`. Among the anchors that may fire the most similar sentence wins,
    less `relation_rank_weight` times what a relation-checked anchor's relation cosine falls short
    of 1 (`ranking`).
    """

    INDEXES_KEPT = 2  # the live stack and the one before it (requests in flight during a swap)

    def __init__(
        self,
        center: torch.Tensor,
        threshold: float,
        supersede_margin: float,
        subject: SubjectKeys | None = None,
        relation_rank_weight: float = 0.0,
    ) -> None:
        self.center = center
        self.threshold = threshold
        self.supersede_margin = supersede_margin
        self.subject = subject
        self.relation_rank_weight = relation_rank_weight
        # (stack, its index), newest first; the stack is held so that its id is not reused.
        self._indexes: tuple[tuple[Sequence[ExpertEntry], AnchorIndex], ...] = ()
        self._lock = threading.Lock()

    def normalise(self, q: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(q.float() - self.center.to(q.device), dim=-1)

    def index(self, stack: Sequence[ExpertEntry]) -> AnchorIndex:
        """The anchor index of `stack`, built on its first use and kept while it is recent; a
        stack that extends a recent one (experts added) reuses that one's index for them."""
        known = self._indexes
        for older, index in known:
            if older is stack:
                return index
        index = None
        for older, older_index in known:
            if 0 < len(older) <= len(stack) and all(a is b for a, b in zip(older, stack, strict=False)):
                # The same experts (another tuple of them), or those and more.
                more = stack[len(older) :]
                index = older_index if not more else older_index.extended(self.build_index(more), len(older))
                break
        if index is None:
            index = self.build_index(stack)
        with self._lock:
            self._indexes = ((stack, index),) + tuple(p for p in self._indexes if p[0] is not stack)[: self.INDEXES_KEPT - 1]
        return index

    def build_index(self, stack: Sequence[ExpertEntry]) -> AnchorIndex:
        anchors = torch.cat([e.anchors for e in stack])
        keyed = torch.zeros(len(anchors), dtype=torch.bool)
        subject = relation = relation_keyed = lengths = span = span_keyed = tokens = None
        if self.subject is not None:
            dim = self.subject.mean.shape[-1]
            rows = subject_anchor_matrix(stack, dim)
            keyed = ~torch.isnan(rows).any(dim=1)
            subject = self.subject.normalise(torch.nan_to_num(rows))
            relation = relation_anchor_matrix(stack, dim)
            relation_keyed = ~torch.isnan(relation).any(dim=1)
            lengths = subject_lengths(stack)
            spans = span_anchor_matrix(stack, dim)
            span_keyed = ~torch.isnan(spans).any(dim=1) & (lengths > 0).to(spans.device)
            span = self.subject.normalise(torch.nan_to_num(spans))
            tokens = subject_token_matrix(stack)
        return AnchorIndex(
            sentence=self.normalise(anchors),
            owners=anchor_owners(stack),
            edit_ids=anchor_edit_ids(stack),
            keyed=keyed,
            any_keyed=bool(keyed.any()),
            subject=subject,
            relation=relation,
            relation_keyed=relation_keyed,
            lengths=lengths,
            span=span,
            span_keyed=span_keyed,
            tokens=tokens,
        )

    def similarities(self, queries: torch.Tensor, stack: Sequence[ExpertEntry]) -> torch.Tensor:
        """(B, n_anchors) centred cosines, anchors in stack order."""
        return self.normalise(queries) @ self.index(stack).sentence.to(queries.device).T

    def eligibility(
        self,
        queries: torch.Tensor,
        stack: Sequence[ExpertEntry],
        subject_states: torch.Tensor | None = None,
        query_mask: torch.Tensor | None = None,
        relation_weights: torch.Tensor | None = None,
        *,
        subject_tokens: SubjectTokens | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """(sentence cosines, which anchors may fire, subject cosines or None, relation cosines or
        None, span cosines or None), each (B, n_anchors); relation and span cosines are NaN where
        they were not needed. `subject_tokens`: the tokens of `subject_states` (for the token
        check; None: no token check)."""
        index = self.index(stack)
        sims = self.normalise(queries) @ index.sentence.to(queries.device).T
        eligible = sims >= self.threshold
        subject_sims = relation_sims = span_sims = None
        if self.subject is not None and subject_states is not None and index.any_keyed:
            assert index.subject is not None
            match = self._subject_match(sims, subject_states, query_mask, index)
            # An edit with a subject key fires only where its subject is mentioned (and the
            # sentence is not wholly unlike the edit's), whatever the sentence gate says...
            subject_sims = match.scores
            keyed_ok = (subject_sims >= self.subject.threshold) & (sims >= self.subject.sentence_floor)
            if self.subject.span_threshold is not None:
                keyed_ok, span_sims = self._span_check(keyed_ok, match, subject_states, query_mask, index)
            if self.subject.token_check and subject_tokens is not None and index.tokens is not None:
                keyed_ok = self._token_check(keyed_ok, match, subject_tokens, index)
            if self.subject.relation_threshold is not None:
                keyed_ok, relation_sims = self._relation_check(
                    keyed_ok, match, subject_states, query_mask if relation_weights is None else relation_weights, index
                )
            eligible = torch.where(match.keyed.to(sims.device), keyed_ok, eligible)
        return sims, eligible, subject_sims, relation_sims, span_sims

    def ranking(self, sims: torch.Tensor, relation_sims: torch.Tensor | None) -> torch.Tensor:
        """(B, n_anchors) what decides among the anchors that may fire: the sentence cosine less
        `relation_rank_weight` times the relation cosine's shortfall from 1 where the relation check
        ran (none elsewhere). Sentence states read a reworded prompt ("Ramalinaceae: which family
        does it belong to?") as near another question about its subject as its own; the relation
        key tells them apart."""
        if relation_sims is None or not self.relation_rank_weight:
            return sims
        shortfall = 1.0 - torch.nan_to_num(relation_sims.to(sims.device), nan=1.0)
        return sims - self.relation_rank_weight * shortfall

    def _subject_match(
        self, sims: torch.Tensor, subject_states: torch.Tensor, query_mask: torch.Tensor | None, index: AnchorIndex
    ) -> SubjectMatch:
        """The subject match of every keyed anchor whose sentence clears the floor for some row
        (only those can fire on a subject); the others score -2. Comparing every token with
        every anchor is most of a request's routing cost, and most anchors are far below the floor."""
        assert self.subject is not None and index.subject is not None
        keyed = index.keyed.to(sims.device)
        above = (sims >= self.subject.sentence_floor) & keyed
        candidates = above.any(dim=0).nonzero().flatten()
        if 2 * len(candidates) > index.size:  # gathering most of the keys costs more than comparing all of them
            found = self.subject.scores_normalised(subject_states, query_mask, index.subject, keyed)
            outside = ~above.any(dim=0, keepdim=True).to(found.scores.device)
            return SubjectMatch(keyed, found.scores.masked_fill(outside, -2.0), found.where)
        scores = torch.full(sims.shape, -2.0, device=sims.device)
        where = torch.zeros(sims.shape, dtype=torch.long, device=sims.device)
        if len(candidates):
            found = self.subject.scores_normalised(
                subject_states, query_mask, index.subject[candidates.to(index.subject.device)], keyed[candidates]
            )
            scores[:, candidates] = found.scores.to(sims.device)
            where[:, candidates] = found.where.to(sims.device)
        return SubjectMatch(keyed, scores, where)

    def _span_check(
        self, keyed_ok: torch.Tensor, match: SubjectMatch, subject_states: torch.Tensor, query_mask: torch.Tensor | None, index: AnchorIndex
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """... where the whole subject matches, not only its last token: the tokens ending at the
        match, as many as the edit's subject has, must be close to its span key. One token's
        state leaves subjects that end alike ("(SS-369)" / "(APA-56)") indistinguishable."""
        assert self.subject is not None and self.subject.span_threshold is not None
        assert index.span is not None and index.span_keyed is not None
        return self._check_pairs(
            keyed_ok,
            match,
            index,
            index.span,
            index.span_keyed,
            self.subject.span_threshold,
            self.subject.span_vectors,
            subject_states,
            query_mask,
        )

    @staticmethod
    def _token_check(keyed_ok: torch.Tensor, match: SubjectMatch, subject_tokens: SubjectTokens, index: AnchorIndex) -> torch.Tensor:
        """... where the tokens ending at the match are the edit subject's own (its ids in the
        lower-cased subject view, so any case, and a subject first in the prompt keeps its leading
        space) and a word ends there ("France" is not "Franceville", whose first token's state is
        France's: the model reads left to right). States that are merely alike let other names
        in, and the more edits, the more names end alike. Anchors whose ids are unknown (experts
        from before) are not checked."""
        assert index.tokens is not None and index.lengths is not None
        tokens = index.tokens.to(keyed_ok.device)
        pairs = (keyed_ok & (tokens[:, 0] >= 0)).nonzero()
        if not len(pairs):
            return keyed_ok
        rows, anchors = pairs[:, 0], pairs[:, 1]
        width = tokens.shape[1]
        where = match.where.to(keyed_ok.device)[rows, anchors]
        length = index.lengths.to(keyed_ok.device)[anchors]
        offsets = torch.arange(width, device=keyed_ok.device)
        positions = where[:, None] - length[:, None] + 1 + offsets  # the span ending at the match
        inside = offsets < length[:, None]
        ids = subject_tokens.ids.to(keyed_ok.device)
        read = ids[rows[:, None], positions.clamp(0, ids.shape[1] - 1)]
        same = ((read == tokens[anchors]) | ~inside).all(dim=1) & (positions[:, 0] >= 0)
        same &= subject_tokens.word_ends.to(keyed_ok.device)[rows, where]
        keyed_ok = keyed_ok.clone()
        keyed_ok[rows, anchors] = same
        return keyed_ok

    def _relation_check(
        self,
        keyed_ok: torch.Tensor,
        match: SubjectMatch,
        subject_states: torch.Tensor,
        relation_weights: torch.Tensor | None,
        index: AnchorIndex,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """... and only where the prompt asks what the edit asks about it: outside the span that
        matched the subject, its tokens must be close to the edit prompt's (the relation key).
        Without this, every question about an edited subject gets the edit's answer."""
        assert self.subject is not None and self.subject.relation_threshold is not None
        assert index.relation is not None and index.relation_keyed is not None
        return self._check_pairs(
            keyed_ok,
            match,
            index,
            index.relation,
            index.relation_keyed,
            self.subject.relation_threshold,
            self.subject.relation_vectors,
            subject_states,
            relation_weights,
        )

    @staticmethod
    def _check_pairs(
        keyed_ok: torch.Tensor,
        match: SubjectMatch,
        index: AnchorIndex,
        keys: torch.Tensor,
        has_key: torch.Tensor,
        threshold: float,
        vectors_of: Callable[..., torch.Tensor],
        states: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each (row, anchor) pair still allowed whose anchor has a key: the row's vector for the
        span that matched the anchor's subject (`vectors_of`, e.g. `SubjectKeys.relation_vectors`)
        must be within cosine `threshold` of it. Returns the pairs still allowed and the cosines
        (NaN where none was needed)."""
        assert index.lengths is not None
        sims = torch.full(keyed_ok.shape, float("nan"), device=keyed_ok.device)
        pairs = (keyed_ok & has_key.to(keyed_ok.device)).nonzero()
        if not len(pairs):
            return keyed_ok, sims
        rows, anchors = pairs[:, 0], pairs[:, 1]
        keys = keys.to(keyed_ok.device)
        where, lengths = match.where.to(keyed_ok.device)[rows, anchors], index.lengths.to(keyed_ok.device)[anchors]
        vectors = vectors_of(states, mask, rows, where, lengths).to(keys.device)
        sims[rows, anchors] = (vectors * keys[anchors]).sum(dim=-1)
        keyed_ok = keyed_ok.clone()
        keyed_ok[rows, anchors] = sims[rows, anchors] >= threshold
        return keyed_ok, sims

    def route(
        self,
        queries: torch.Tensor,
        stack: Sequence[ExpertEntry],
        subject_states: torch.Tensor | None = None,
        query_mask: torch.Tensor | None = None,
        relation_weights: torch.Tensor | None = None,
        *,
        subject_tokens: SubjectTokens | None = None,
    ) -> list[RouteDecision]:
        if not stack:
            return [RouteDecision(None, None, None, None) for _ in range(queries.shape[0])]
        sims, eligible, subject_sims, relation_sims, span_sims = self.eligibility(
            queries, stack, subject_states, query_mask, relation_weights, subject_tokens=subject_tokens
        )
        index = self.index(stack)
        owner = index.owners.to(sims.device)
        edit_ids = index.edit_ids
        ranking = self.ranking(sims, relation_sims)
        decisions = []
        for r, row in enumerate(sims):
            if not bool(eligible[r].any()):
                nearest = int(row.argmax())
                decisions.append(RouteDecision(None, None, float(row[nearest]), edit_ids[nearest]))
                continue
            best = float(ranking[r].masked_fill(~eligible[r], -2.0).max())
            # Among near-equal anchors (the same fact edited again) the newest expert wins.
            near = (eligible[r] & (ranking[r] >= best - self.supersede_margin)).nonzero().flatten()
            pick = int(near[owner[near].argmax()])
            idx = int(owner[pick])
            subject_score = None
            if subject_sims is not None and float(subject_sims[r, pick]) > -2.0:
                subject_score = float(subject_sims[r, pick])
            decisions.append(
                RouteDecision(
                    idx,
                    stack[idx].name,
                    float(row[pick]),
                    edit_ids[pick],
                    subject_score,
                    _checked_score(relation_sims, r, pick),
                    _checked_score(span_sims, r, pick),
                )
            )
        return decisions


def _checked_score(sims: torch.Tensor | None, row: int, anchor: int) -> float | None:
    """One cosine of a relation or span check, or None where that check did not run."""
    if sims is None or bool(torch.isnan(sims[row, anchor])):
        return None
    return float(sims[row, anchor])


def anchor_owners(stack: Sequence[ExpertEntry]) -> torch.Tensor:
    """The stack index of the expert owning each anchor, in stack order."""
    return torch.cat([torch.full((len(e.anchors),), i, dtype=torch.long) for i, e in enumerate(stack)])


def anchor_edit_ids(stack: Sequence[ExpertEntry]) -> list[int | None]:
    """The edit id of each anchor, in stack order (None where an expert recorded none)."""
    return [eid for e in stack for eid in (e.edit_ids or [None] * len(e.anchors))]


def answer_positions(query_mask: torch.Tensor | None, rows: torch.Tensor, length: int) -> torch.Tensor | None:
    """(len(rows), length) which of `rows`' positions read the answer: at a prefill of `length`
    tokens each prompt's last token and those after it (as in training); None at later steps,
    where every position is a generated token's."""
    if query_mask is None or query_mask.shape[1] != length:
        return None
    last = last_positions(query_mask[rows.to(query_mask.device)])
    return torch.arange(length, device=last.device)[None, :] >= last[:, None]


def answer_slots(slots: torch.Tensor, at: torch.Tensor | None) -> torch.Tensor:
    """The code slot of each position of the rows holding `slots`: each row's slot where the
    answer is read (`at`, from `answer_positions`), -1 elsewhere; with `at` None (a later step)
    the row's slot."""
    if at is None:
        return slots
    return torch.where(at.to(slots.device), slots[:, None], torch.full_like(slots[:, None], -1))


def decide(state: RouteState, x: torch.Tensor, pooling: Pooling) -> None:
    """Compute the prompt queries from `x` and fix the route for the whole request."""
    state.queries = pool(x, state.query_mask, pooling).detach().float()
    if state.capture_only:
        raise QueryCaptured
    if state.forced is not None:
        state.decisions = list(state.forced)
    elif state.router is None:
        state.decisions = [RouteDecision(None, None, None, None)] * x.shape[0]
    else:
        state.decisions = state.router.route(
            state.queries,
            state.stack,
            state.subject_states,
            state.subject_mask,
            state.relation_weights,
            subject_tokens=state.subject_tokens,
        )
    state.subject_states = state.subject_mask = state.relation_weights = state.subject_tokens = None  # only needed for the decision
    rows: dict[int, list[int]] = {}
    slots: dict[int, list[int]] = {}
    for r, d in enumerate(state.decisions):
        if d.expert_index is not None:
            rows.setdefault(d.expert_index, []).append(r)
            slots.setdefault(d.expert_index, []).append(state.stack[d.expert_index].slot_of(d.nearest_edit_id))
    state.groups = [(i, torch.tensor(r, device=x.device), torch.tensor(slots[i], device=x.device)) for i, r in rows.items()]
