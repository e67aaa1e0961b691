"""Continuous batching: requests join and leave one running decode batch between steps, each row
with its own route (decided once, at its prefill), sampling parameters and stops (pure torch: no
threads here; app/engine/scheduler.py runs it).

A row's text is what `LemoeEditor.generate` returns for it alone: the same route, the same stop
rules, the same decoding of tokens. The batch keeps one key/value cache, left-padded to its
longest row; a joining row is padded to it (or it to the row) and a leaving row is cut out.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from app.lemoe.decoding import SeededSampler, TextDeltas, completion_text, cut_at_stop
from app.lemoe.editor import Generation, LemoeEditor
from app.lemoe.expert import ExpertEntry
from app.lemoe.routing import RouteDecision, RouteState, routing
from app.lemoe.stopping import StopReason, StopSignal
from app.lemoe.text import encode_batch
from app.lemoe.types import SamplingParams


@dataclass(frozen=True)
class RowRequest:
    """One generation to run in the batch."""

    prompt: str
    params: SamplingParams
    stack: tuple[ExpertEntry, ...]  # the live stack when the request came: its route is decided on it
    route_on: str | None = None  # decide the route on this text instead of the prompt (a chat's user message)
    stop: StopSignal | None = None
    on_text: Callable[[str], None] | None = None  # receives the text as it is generated


@dataclass
class _Row:
    key: Hashable
    request: RowRequest
    route: RouteDecision
    expert: ExpertEntry | None
    slot: int  # the routed edit's code in `expert` (-1: none), held like the route
    position: int  # position id of the next token fed in
    sampler: SeededSampler | None
    deltas: TextDeltas | None
    tokens: list[int] = field(default_factory=list)
    last: int = 0  # the token to feed at the next step


class DecodeBatch:
    """Rows decoding together; `add` prefills a request (alone) and lets it join, `step` decodes
    one token for every row and returns the rows that finished (they leave the batch)."""

    def __init__(self, editor: LemoeEditor) -> None:
        self.editor = editor
        self.rows: list[_Row] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # (B, L) 1 where the cache holds a real token

    def __len__(self) -> int:
        return len(self.rows)

    @torch.inference_mode()
    def add(self, arrivals: Sequence[tuple[Hashable, RowRequest]]) -> list[tuple[Hashable, Generation]]:
        """Prefill the `arrivals` and let them join; the ones that ended already (first token an
        end of sequence, one token asked, a stop string, or their signal fired), with their
        generations. Requests that share a stack and a way of routing are prefilled together."""
        done: list[tuple[Hashable, Generation]] = []
        groups: dict[tuple[int, bool], list[tuple[Hashable, RowRequest]]] = {}
        for key, request in arrivals:
            early = request.stop.reason() if request.stop is not None else None
            if early is not None:
                done.append((key, Generation(request.prompt, "", RouteDecision(None, None, None, None), 0, early)))
                continue
            elsewhere = request.route_on is not None and request.route_on != request.prompt
            groups.setdefault((id(request.stack), elsewhere), []).append((key, request))
        for (_, elsewhere), group in groups.items():
            done += self._prefill(group, route_elsewhere=elsewhere)
        return done

    def _prefill(self, group: Sequence[tuple[Hashable, RowRequest]], *, route_elsewhere: bool) -> list[tuple[Hashable, Generation]]:
        """One left-padded forward pass over the prompts of `group` (one stack): each row's route
        is decided on its prompt in that pass, or first on its `route_on` text."""
        editor, device = self.editor, self.editor.device
        requests = [request for _, request in group]
        stack = requests[0].stack
        enc = encode_batch(editor.tokenizer, [r.prompt for r in requests], side="left")
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        routed = editor.route([r.route_on for r in requests], stack=stack) if route_elsewhere else None
        state = editor.route_state(mask, stack=stack, prompts=[r.prompt for r in requests], forced=routed)
        cache = DynamicCache()
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        with routing(state):
            out = editor.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1)
        done, rows = [], []
        for i, (key, request) in enumerate(group):
            route = routed[i] if routed is not None else state.decisions[i]
            row = self._row(key, request, route, ids[i][mask[i].bool()])
            finished = self._take(row, out.logits[i : i + 1, -1])
            if finished is None:
                rows.append((i, row))
            else:
                done.append((key, finished))
        if rows:
            kept = torch.tensor([i for i, _ in rows], device=device)
            for layer in cache.layers:
                layer.keys, layer.values = layer.keys.index_select(0, kept), layer.values.index_select(0, kept)
            self._join([row for _, row in rows], cache, mask.index_select(0, kept))
        return done

    def _row(self, key: Hashable, request: RowRequest, route: RouteDecision, prompt_ids: torch.Tensor) -> _Row:
        params, tokenizer = request.params, self.editor.tokenizer
        sampler = None
        if params.do_sample:
            seed = params.seed if params.seed is not None else random.SystemRandom().getrandbits(63)
            sampler = SeededSampler(seed, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
        deltas = None
        if request.on_text is not None:
            deltas = TextDeltas(tokenizer, request.on_text, stops=params.stop, eos=tokenizer.eos_token_id)
            deltas.put(prompt_ids)  # the prompt: TextDeltas skips it, as transformers' streamers do
        expert = None if route.expert_index is None else request.stack[route.expert_index]
        slot = -1 if expert is None else expert.slot_of(route.nearest_edit_id)
        return _Row(key, request, route, expert, slot, len(prompt_ids), sampler, deltas)

    @torch.inference_mode()
    def step(self) -> list[tuple[Hashable, Generation]]:
        """One token for every row; the rows that finished, with their generations."""
        if not self.rows:
            return []
        device = self.editor.device
        ids = torch.tensor([[row.last] for row in self.rows], device=device)
        positions = torch.tensor([[row.position] for row in self.rows], device=device)
        self.mask = torch.cat([self.mask, torch.ones((len(self.rows), 1), dtype=self.mask.dtype, device=device)], dim=1)
        with routing(self._route_state()):
            out = self.editor.model(
                input_ids=ids, attention_mask=self.mask, position_ids=positions, cache=self.cache, use_cache=True, logits_to_keep=1
            )
        done, keep = [], []
        for i, row in enumerate(self.rows):
            row.position += 1
            finished = self._take(row, out.logits[i : i + 1, -1])
            if finished is None:
                keep.append(i)
            else:
                done.append((row.key, finished))
        if len(keep) < len(self.rows):
            self._keep(keep)
        return done

    def fail_all(self) -> list[Hashable]:
        """Empty the batch (after an error in a step); the keys of the rows it held."""
        keys = [row.key for row in self.rows]
        self.rows, self.cache, self.mask = [], None, None
        return keys

    # --- rows ------------------------------------------------------------------------------------
    def _take(self, row: _Row, logits: torch.Tensor) -> Generation | None:
        """Pick `row`'s next token from its (1, V) logits; its Generation if that ends it."""
        if row.sampler is not None:
            token = int(row.sampler(None, logits.float()).argmax(dim=-1))
        else:
            token = int(logits.argmax(dim=-1))
        params, eos = row.request.params, self.editor.tokenizer.eos_token_id
        if row.deltas is not None:
            row.deltas.put(torch.tensor([token]))
        reason = None
        if eos is not None and token == eos:
            reason = StopReason.EOS
        else:
            row.tokens.append(token)
            row.last = token
            if params.stop and cut_at_stop(completion_text(self.editor.tokenizer, row.tokens), params.stop)[1]:
                reason = StopReason.STOP
            elif len(row.tokens) >= params.max_new_tokens:
                reason = StopReason.LENGTH
            elif row.request.stop is not None:
                reason = row.request.stop.reason()
        if reason is None:
            return None
        if row.deltas is not None:
            row.deltas.end()
        text, _ = cut_at_stop(completion_text(self.editor.tokenizer, row.tokens), params.stop)
        return Generation(row.request.prompt, text, row.route, len(row.tokens), reason)

    def _route_state(self) -> RouteState:
        """Each row on its own expert (held from its prefill), the base model for the rest."""
        experts: list[ExpertEntry] = []
        rows: dict[int, list[int]] = {}
        slots: dict[int, list[int]] = {}
        for r, row in enumerate(self.rows):
            if row.expert is None:
                continue
            index = next((k for k, e in enumerate(experts) if e is row.expert), None)
            if index is None:
                experts.append(row.expert)
                index = len(experts) - 1
            rows.setdefault(index, []).append(r)
            slots.setdefault(index, []).append(row.slot)
        device = self.editor.device
        return RouteState(
            stack=experts,
            decisions=[row.route for row in self.rows],  # decided: the query probe leaves them be
            groups=[(k, torch.tensor(r, device=device), torch.tensor(slots[k], device=device)) for k, r in rows.items()],
        )

    # --- the shared cache ----------------------------------------------------------------------
    def _join(self, rows: Sequence[_Row], cache: DynamicCache, mask: torch.Tensor) -> None:
        """`rows` (prefilled together: `cache` and `mask` hold them, left-padded) join the batch."""
        if not self.rows:
            self.rows, self.cache, self.mask = list(rows), cache, mask
            return
        width = max(self.mask.shape[1], mask.shape[1])
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, width), _pad_left(theirs.keys, width)], dim=0)
            mine.values = torch.cat([_pad_left(mine.values, width), _pad_left(theirs.values, width)], dim=0)
        self.mask = torch.cat([_pad_left(self.mask, width, dim=1), _pad_left(mask, width, dim=1)], dim=0)
        self.rows += rows

    def _keep(self, indices: Sequence[int]) -> None:
        if not indices:
            self.rows, self.cache, self.mask = [], None, None
            return
        index = torch.tensor(indices, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        # Columns no remaining row uses (the padding of a longer row that left) go too.
        start = int((mask.sum(dim=0) > 0).long().argmax())
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]
        self.mask = mask[:, start:]
        self.rows = [self.rows[i] for i in indices]


def _pad_left(x: torch.Tensor, width: int, *, dim: int = 2) -> torch.Tensor:
    """`x` with zeros before its entries along `dim` up to `width` (cache: (B, H, L, D); mask: (B, L))."""
    missing = width - x.shape[dim]
    if missing == 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([torch.zeros(shape, dtype=x.dtype, device=x.device), x], dim=dim)
