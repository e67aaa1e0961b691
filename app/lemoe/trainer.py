"""Training one new expert on one batch of edits, with only the layers above the adaptor per step."""

from __future__ import annotations

import contextlib
import copy
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn
from transformers import DynamicCache

from app.lemoe.config import LemoeConfig, TrainPrecision
from app.lemoe.expert import Expert
from app.lemoe.layout import layout_of
from app.lemoe.reference import CONTEXT_PREFIXES
from app.lemoe.routing import QueryCaptured, RouteState, routing
from app.lemoe.text import encode_batch, encode_pair

ProgressFn = Callable[[int, float], None]  # (step, loss)


@dataclass(frozen=True)
class TrainingExample:
    prompt: str
    target: str
    slot: int = 0  # which edit of the batch it teaches (LemoeConfig.edit_codes)
    own: bool = False  # the edit's own prompt (not a rephrase, a prefixed copy or the chat form)


@dataclass(frozen=True)
class TrainResult:
    expert: Expert
    steps: int
    final_loss: float
    seconds: float
    examples: int


CHUNK = 16  # examples per forward pass during training
# Examples whose first this many tokens agree (every chat-form example: the template's system
# prompt and header) are trained in one packed row that computes their shared prefix once
# (LemoeConfig.train_packing).
MIN_SHARED_PREFIX = 8


class _CaptureInput(nn.Module):
    """Stands in for the trained expert while layer inputs are cached: records the adaptor's
    input and adds nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x
        return torch.zeros_like(x)


@dataclass
class _Chunk:
    """Examples of similar length, right-padded, with what the frozen model computes for them up to
    the adaptor cached: the adaptor layer's output without the expert (`cached`) and the input
    the expert reads (`expert_input`). The expert only adds to that output, so a step runs the
    expert and the layers above the adaptor layer, not the adaptor layer itself.

    A packed chunk is one row: the examples' shared prefix once, then each example's own tokens,
    with explicit positions and a 4-D mask under which each example attends to the prefix and to
    itself only; it computes what the padded batch would (the prefix's states do not depend on
    what follows it) without computing the prefix once per example."""

    cached: torch.Tensor
    expert_input: torch.Tensor
    mask: torch.Tensor
    where: torch.Tensor
    targets: torch.Tensor
    positions: torch.Tensor | None = None
    slots: torch.Tensor | None = None
    answer_only: bool = False  # the expert adds at the labelled positions alone (LemoeConfig.expert_positions)

    @classmethod
    def build(cls, pairs: list, pad: int, model: nn.Module, layer: int, device: torch.device, *, packing: bool = True) -> _Chunk:
        shared = _shared_prefix(pairs) if packing and len(pairs) > 1 else 0
        window = sliding_window(model)
        longest = max(len(p.prompt_ids) + len(p.target_ids) for p in pairs)
        if shared >= MIN_SHARED_PREFIX and (window is None or longest <= window):
            ids, mask, labels, positions = _packed_rows(pairs, shared, next(model.parameters()).dtype)
        else:
            ids, mask, labels, positions = _padded_rows(pairs, pad)
        ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
        positions = None if positions is None else positions.to(device)
        capture = _CaptureInput()
        with torch.no_grad(), routing(RouteState(train_expert=capture)):
            lower = lower_model(model, layer + 1)
            cached = lower(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).last_hidden_state
        assert capture.seen is not None, f"layer {layer} carries no adaptor"
        where = labels != -100
        return cls(cached, capture.seen, mask, where, labels[where], positions)

    def labelled_hidden(self, expert: Expert, upper: nn.Module) -> torch.Tensor:
        """The last layer's states at the labelled positions with `expert` in the adaptor (with
        `answer_only`, adding to those positions alone), in the order of `targets`."""
        added = expert(self.expert_input, self.slots)
        if self.answer_only:
            added = added * self.where.unsqueeze(-1).to(added.dtype)
        hidden = upper(
            inputs_embeds=self.cached + added, attention_mask=self.mask, position_ids=self.positions, use_cache=False
        ).last_hidden_state
        return hidden[self.where]

    def visible(self) -> torch.Tensor:
        """(rows, T, T) which tokens each token attends to."""
        if self.positions is not None:  # packed: the additive mask says
            return self.mask[:, 0] == 0
        length = self.mask.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=self.mask.device).tril()
        return causal[None] & self.mask.bool()[:, None, :]

    def answer_rows(self, upper: nn.Module, start: int) -> _AnswerRows:
        """This chunk for an expert that acts at the labelled positions only: the other tokens'
        keys and values in the layers from `start` (the first above the adaptor) are computed here
        once, with the layers of `upper`."""
        cache = DynamicCache()
        with torch.no_grad():
            upper(inputs_embeds=self.cached, attention_mask=self.mask, position_ids=self.positions, cache=cache, use_cache=True)
        past = [None] * start + [(layer.keys, layer.values) for layer in cache.layers[start:]]
        rows, length = self.where.shape
        counts = self.where.sum(dim=1)
        width = int(counts.max())
        slot = torch.arange(width, device=self.where.device)
        valid = slot[None, :] < counts[:, None]
        # Each row's labelled positions in order, then 0 in the slots a shorter row leaves empty.
        order = torch.sort((~self.where).long(), dim=1, stable=True).indices[:, :width]
        index = torch.where(valid, order, torch.zeros_like(order))
        visible = self.visible()
        seen = torch.gather(visible, 1, index[:, :, None].expand(rows, width, length))
        fixed = seen & ~self.where[:, None, :]  # a labelled token's cached state predates the expert
        among = torch.gather(seen, 2, index[:, None, :].expand(rows, width, width)) & valid[:, None, :]
        among |= torch.eye(width, dtype=torch.bool, device=among.device)[None] & ~valid[:, :, None]  # empty slots see themselves
        allowed = torch.cat([fixed, among], dim=2)
        dtype = self.cached.dtype
        mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)
        positions = torch.arange(length, device=index.device).expand(rows, length) if self.positions is None else self.positions
        take = lambda t: torch.gather(t, 1, index[:, :, None].expand(rows, width, t.shape[-1]))  # noqa: E731
        slots = None if self.slots is None else torch.where(valid, torch.gather(self.slots, 1, index), -1)
        return _AnswerRows(
            take(self.cached), take(self.expert_input), valid, torch.gather(positions, 1, index), mask[:, None], past, self.targets, slots
        )


@dataclass
class _AnswerRows:
    """A chunk trained for an expert that acts only where the answer is read (its labelled
    positions; `LemoeConfig.expert_positions`). Every other token's states above the adaptor are
    then the same at every step, so their keys and values there are computed once (`past`) and a
    step runs the labelled tokens alone, attending to them and to each other as in the full rows.
    The same loss as the full rows with the expert masked to those positions (a test checks)."""

    cached: torch.Tensor  # (rows, A, d) the adaptor layer's output without the expert, at each labelled token
    expert_input: torch.Tensor  # (rows, A, d)
    valid: torch.Tensor  # (rows, A) which slots hold a labelled token (rows hold different numbers)
    positions: torch.Tensor  # (rows, A)
    mask: torch.Tensor  # (rows, 1, A, T + A) additive: the chunk's tokens (cached keys), then the labelled ones
    past: list[tuple[torch.Tensor, torch.Tensor] | None]  # per decoder layer: keys and values of the T tokens
    targets: torch.Tensor
    slots: torch.Tensor | None = None

    def labelled_hidden(self, expert: Expert, upper: nn.Module) -> torch.Tensor:
        hidden = upper(
            inputs_embeds=self.cached + expert(self.expert_input, self.slots),
            attention_mask=self.mask,
            position_ids=self.positions,
            cache=DynamicCache(ddp_cache_data=[(None, None) if kv is None else kv for kv in self.past]),
            use_cache=True,
        ).last_hidden_state
        return hidden[self.valid]


Rows = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]  # ids, mask, labels, positions


def _padded_rows(pairs: list, pad: int) -> Rows:
    """One right-padded row per pair; the label at position t is the token at t+1, on target
    tokens only (next-token prediction)."""
    length = max(len(p.prompt_ids) + len(p.target_ids) for p in pairs)
    ids = torch.full((len(pairs), length), pad, dtype=torch.long)
    mask = torch.zeros((len(pairs), length), dtype=torch.long)
    labels = torch.full((len(pairs), length), -100, dtype=torch.long)
    for i, p in enumerate(pairs):
        seq = p.prompt_ids + p.target_ids
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        start = len(p.prompt_ids) - 1
        labels[i, start : start + len(p.target_ids)] = torch.tensor(p.target_ids)
    return ids, mask, labels, None


def _packed_rows(pairs: list, shared: int, dtype: torch.dtype) -> Rows:
    """One row: the pairs' first `shared` tokens once, then each pair's other tokens, with their
    positions in their own sequence and a (1, 1, L, L) additive mask under which a token sees the
    shared tokens and the earlier tokens of its own pair."""
    seqs = [p.prompt_ids + p.target_ids for p in pairs]
    ids = seqs[0][:shared] + [t for s in seqs for t in s[shared:]]
    owner = torch.tensor([-1] * shared + [i for i, s in enumerate(seqs) for _ in s[shared:]])
    positions = torch.tensor(list(range(shared)) + [t for s in seqs for t in range(shared, len(s))])
    labels = torch.full((len(ids),), -100, dtype=torch.long)
    offset = shared
    for p, seq in zip(pairs, seqs, strict=True):
        start = offset + len(p.prompt_ids) - 1 - shared  # _shared_prefix keeps each prompt's last token
        labels[start : start + len(p.target_ids)] = torch.tensor(p.target_ids)
        offset += len(seq) - shared
    visible = ((owner[None, :] == -1) | (owner[:, None] == owner[None, :])) & (positions[None, :] <= positions[:, None])
    mask = torch.zeros(visible.shape, dtype=dtype).masked_fill(~visible, torch.finfo(dtype).min)
    return torch.tensor([ids]), mask[None, None], labels[None], positions[None]


def sliding_window(model: nn.Module) -> int | None:
    """The attention window some layer of `model` has (a query sees only the keys this close),
    or None. The packed mask has no window, so a chunk longer than it trains padded."""
    config = getattr(model, "config", None)
    window = getattr(config, "sliding_window", None)
    kinds = getattr(config, "layer_types", None)
    if kinds is not None and "sliding_attention" not in kinds:
        return None
    return window if isinstance(window, int) else None


def _shared_prefix(pairs: list) -> int:
    """Tokens every pair's sequence starts with, short of each prompt's last token (a prompt's
    last token is where its first label is read, so it stays with its own example)."""
    seqs = [p.prompt_ids + p.target_ids for p in pairs]
    limit = min(len(p.prompt_ids) for p in pairs) - 1
    shared = 0
    while shared < limit and all(s[shared] == seqs[0][shared] for s in seqs):
        shared += 1
    return shared


def _chunked(pairs: list, *, packing: bool = True) -> list[list[int]]:
    """Indices of `pairs` in chunks of at most CHUNK: with `packing` those that share their first
    MIN_SHARED_PREFIX tokens with others together (to be packed), the rest by length (little
    padding)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(pairs):
        head = tuple(p.prompt_ids[:MIN_SHARED_PREFIX])
        if packing and len(p.prompt_ids) > MIN_SHARED_PREFIX:
            groups.setdefault(head, []).append(i)
    shared = sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])
    grouped = {i for g in shared for i in g}
    rest = [i for i in range(len(pairs)) if i not in grouped]
    size = lambda i: len(pairs[i].prompt_ids) + len(pairs[i].target_ids)  # noqa: E731
    chunks = []
    for members in [*shared, rest]:
        order = sorted(members, key=size)
        chunks += [order[k : k + CHUNK] for k in range(0, len(order), CHUNK)]
    return chunks


def _view(module: nn.Module) -> nn.Module:
    """A shallow copy whose submodules can be replaced without touching `module`."""
    view = copy.copy(module)
    view._modules = dict(view._modules)
    return view


class _NoPositions(nn.Module):
    """Stands in for an absolute position table: adds exactly nothing to hidden states that
    already hold their positions (a view starting above layer 0 is fed such states)."""

    def __init__(self, table: nn.Embedding) -> None:
        super().__init__()
        self.dim = table.embedding_dim
        self.dtype = table.weight.dtype

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*position_ids.shape, self.dim, dtype=self.dtype, device=position_ids.device)


def _layer_types_from(decoder: nn.Module, start: int) -> None:
    """Give a view starting at layer `start` per-layer attention kinds (full / sliding) indexed
    from its own first layer, on a config of its own, where they differ from the model's."""
    config = getattr(decoder, "config", None)
    kinds = list(getattr(config, "layer_types", None) or [])
    shifted = kinds[start:] + kinds[:start]  # same length and the same kinds, as the config expects
    if shifted == kinds:
        return
    config = copy.copy(config)
    config.layer_types = shifted
    decoder.config = config


def upper_model(model: nn.Module, start: int) -> nn.Module:
    """A view of `model` that runs decoder layers start.. and the final norm on `inputs_embeds`
    given as the input hidden states of layer `start` (shares weights, mutates nothing)."""
    layout = layout_of(model)
    decoder = _view(layout.decoder_of(model))
    setattr(decoder, layout.layers, nn.ModuleList(list(layout.layers_of(model))[start:]))
    if layout.position_embedding is not None:
        setattr(decoder, layout.position_embedding, _NoPositions(getattr(decoder, layout.position_embedding)))
    _layer_types_from(decoder, start)
    top = _view(model)
    setattr(top, layout.decoder, decoder)
    return top


@dataclass(frozen=True)
class StepModules:
    """What each training step runs above the adaptor layer: its decoder layers and final norm
    (`upper`, fed that layer's output as `inputs_embeds`) and the vocabulary projection, and the
    dtype the step computes in (None: the model's own)."""

    upper: nn.Module
    lm_head: nn.Module
    autocast: torch.dtype | None = None

    @classmethod
    def of(cls, model: nn.Module, start: int, precision: TrainPrecision) -> StepModules:
        """The model's own modules from layer `start` on, or for "bfloat16" a copy of them with
        bfloat16 matrices (the model is not touched, its forward stays bit-identical; autocast
        would cast every frozen weight again at every step). The copy attends eagerly: torch's CPU
        flash-attention backward is ~6x slower in bfloat16 than in float32."""
        layout = layout_of(model)
        upper = layout.decoder_of(upper_model(model, start))
        head = model.get_output_embeddings()
        if precision != "bfloat16":
            return cls(upper, head)
        if next(model.parameters()).dtype == torch.bfloat16:
            return cls(upper, head, torch.bfloat16)
        layers = copy.deepcopy(getattr(upper, layout.layers))
        for parameter in layers.parameters():
            if parameter.dim() >= 2:  # the matrices; norms stay as they are (CPU layer norm wants float32 weights)
                parameter.data = parameter.data.to(torch.bfloat16)
        for module in layers.modules():  # the deep copy gave the layers a config of their own
            if getattr(module, "config", None) is not None and hasattr(module.config, "_attn_implementation"):
                module.config._attn_implementation = "eager"
        setattr(upper, layout.layers, layers)
        return cls(upper, copy.deepcopy(head).to(torch.bfloat16), torch.bfloat16)

    def computing(self, device: torch.device) -> contextlib.AbstractContextManager:
        """The context a step's computation runs in. Autocast's weight cache stays off: it would
        keep the expert's first bfloat16 copy for every later step."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast, cache_enabled=False)


def native_bfloat16(device: torch.device) -> bool:
    """Whether `device` multiplies bfloat16 matrices natively (faster than float32): a CPU with
    AMX or AVX512-BF16, a CUDA GPU that supports it."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    return False


def resolved_precision(precision: TrainPrecision, device: torch.device) -> TrainPrecision:
    """ "auto" as what it means on `device`: "bfloat16" where that is native, else "full"."""
    if precision != "auto":
        return precision
    return "bfloat16" if native_bfloat16(device) else "full"


def lower_model(model: nn.Module, stop: int) -> nn.Module:
    """A view of `model`'s decoder that runs layers ..stop-1 only and returns their output
    un-normalised: the input of layer `stop` (shares weights, mutates nothing, no hooks)."""
    layout = layout_of(model)
    decoder = _view(layout.decoder_of(model))
    setattr(decoder, layout.layers, nn.ModuleList(list(layout.layers_of(model))[:stop]))
    setattr(decoder, layout.final_norm, nn.Identity())
    return decoder


def hidden_at_layer(model: nn.Module, layer: int, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Input hidden states of decoder layer `layer`, without running the layers above it.

    A view that stops early, not a hook that raises: a hook on the shared model would stop
    every concurrent request that reaches that layer too.
    """
    with torch.no_grad(), routing(RouteState()):
        return lower_model(model, layer)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def _answer_slots(chunk: _Chunk, slots: list[int]) -> torch.Tensor:
    """(rows, T) the code slot of each labelled position (from an example's last prompt token on:
    where the answer is read), -1 elsewhere. A packed row holds its examples in order and each
    example's last token has no label, so the k-th run of labelled positions is the k-th example's."""
    where = chunk.where
    out = torch.full(where.shape, -1, dtype=torch.long, device=where.device)
    if chunk.positions is None:  # one example per row
        return torch.where(where, torch.tensor(slots, device=where.device)[:, None], out)
    labelled = where[0].nonzero().flatten()
    # A new run starts where the position does not follow the previous labelled one.
    starts = torch.ones(len(labelled), dtype=torch.long, device=where.device)
    starts[1:] = (labelled[1:] != labelled[:-1] + 1).long()
    out[0, labelled] = torch.tensor(slots, device=where.device)[starts.cumsum(0) - 1]
    return out


def augment(
    edit: TrainingExample,
    rephrases: Sequence[str],
    config: LemoeConfig,
    rng: random.Random,
    *,
    chat: Callable[[str], str] | None = None,
) -> list[TrainingExample]:
    """The edit itself, its given rephrases, copies behind random context prefixes and, given
    `chat` (a user message -> the model's chat prompt), the edit asked as a chat."""
    out = [replace(edit, own=True)] + [TrainingExample(r, edit.target, edit.slot) for r in rephrases]
    prefixes = rng.sample(CONTEXT_PREFIXES, k=min(config.augmentations, len(CONTEXT_PREFIXES)))
    out += [TrainingExample(f"{p} {edit.prompt}", edit.target, edit.slot) for p in prefixes]
    if chat is not None:
        out.append(TrainingExample(chat(edit.prompt), edit.target, edit.slot))
    return out


def train_expert(
    model: nn.Module,
    tokenizer,
    examples: Sequence[TrainingExample],
    *,
    config: LemoeConfig,
    layer: int,
    hidden_size: int,
    device: torch.device,
    progress: ProgressFn | None = None,
    step_modules: StepModules | None = None,
) -> TrainResult:
    """Fit a fresh expert so that, when routed, the model continues each prompt with its target.
    `step_modules`: what the steps run above the adaptor (default: the model's own modules at
    `config.train_precision` resolved for `device`; a caller training many experts builds them
    once)."""
    started = time.perf_counter()
    pairs = [encode_pair(tokenizer, e.prompt, e.target, eos=config.train_eos) for e in examples]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # The loss over all chunks is the same token-weighted mean a single padded batch would give.
    packing = config.train_packing
    warm = config.warmup_loss is not None and any(e.own for e in examples) and not all(e.own for e in examples)
    parts = (
        [[i for i, e in enumerate(examples) if e.own], [i for i, e in enumerate(examples) if not e.own]]
        if warm
        else [list(range(len(examples)))]
    )
    if step_modules is None:
        step_modules = StepModules.of(model, layer + 1, resolved_precision(config.train_precision, device))
    upper, lm_head = step_modules.upper, step_modules.lm_head
    answer_only = config.expert_positions == "answer"
    phases: list[list[_Chunk | _AnswerRows]] = []
    for part in parts:
        chunks = []
        for c in _chunked([pairs[i] for i in part], packing=packing):
            members = [part[j] for j in c]
            # In the steps' precision: in bfloat16 this once-per-expert pass up to the adaptor
            # made training ~10% faster than in float32 (CounterFact T = 32), at the same quality.
            with step_modules.computing(device):
                chunk = _Chunk.build([pairs[i] for i in members], pad, model, layer, device, packing=packing)
            if config.edit_codes:
                chunk.slots = _answer_slots(chunk, [examples[i].slot for i in members])
            chunk.answer_only = answer_only
            chunks.append(chunk)
        if answer_only and sliding_window(model) is None:  # the cached keys' mask has no window
            with routing(RouteState()), step_modules.computing(device):
                chunks = [c.answer_rows(upper, layer + 1) for c in chunks]  # the full rows' states are no longer needed
        phases.append(chunks)
    everything = [c for chunks in phases for c in chunks]
    # With a warm-up, the first steps train on the edits' own prompts alone (about a third of the
    # labelled tokens) until their loss falls below warmup_loss; then on every example.
    steps: list[_Chunk | _AnswerRows] = phases[0] if warm else everything
    # A generator of its own: seeding the global RNG would reach concurrent sampled requests.
    seeded = torch.Generator().manual_seed(config.seed)
    codes = max(e.slot for e in examples) + 1 if config.edit_codes else 0
    expert = Expert(hidden_size, config.expert_hidden, config.expert_kind, generator=seeded, codes=codes).to(device)
    groups: list[dict] = [{"params": [expert.down.weight, expert.up.weight]}]
    if expert.codes is not None:
        groups.append({"params": [expert.codes], "lr": config.edit_code_lr})
    optimizer = torch.optim.Adam(groups, lr=config.lr)
    loss_value = float("inf")
    step = 0
    limit = config.max_steps  # steps on every example; a warm-up's come on top
    with routing(RouteState()), step_modules.computing(device):
        while step < limit:
            step += 1
            optimizer.zero_grad(set_to_none=True)
            # Logits only where a label is, in one projection for the step's chunks: the
            # vocabulary matrix is read once (in bfloat16 that read, not the arithmetic, is its cost).
            hidden = torch.cat([chunk.labelled_hidden(expert, upper) for chunk in steps])
            targets = torch.cat([chunk.targets for chunk in steps])
            loss = nn.functional.cross_entropy(lm_head(hidden).float(), targets)
            loss.backward()
            loss_value = float(loss.detach())
            if progress is not None:
                progress(step, loss_value)
            if steps is everything:
                # Stop on the weights whose loss was just measured: a step taken after it is
                # unmeasured, and at the edit codes' high learning rate one can undo the fit.
                if loss_value < config.loss_threshold:
                    break
            elif loss_value < config.warmup_loss or step >= config.warmup_steps_limit:
                steps, limit = everything, step + config.max_steps
            optimizer.step()
    expert.eval().requires_grad_(False)
    return TrainResult(expert, step, loss_value, time.perf_counter() - started, len(pairs))


def capture_queries(model: nn.Module, tokenizer, prompts: Sequence[str], device: torch.device, batch_size: int = 32) -> torch.Tensor:
    """Raw routing queries of `prompts` (the probe stops each pass at the route layer)."""
    out = []
    for i in range(0, len(prompts), batch_size):
        chunk = list(prompts[i : i + batch_size])
        enc = encode_batch(tokenizer, chunk)
        enc = {k: v.to(device) for k, v in enc.items()}
        state = RouteState(query_mask=enc["attention_mask"], capture_only=True)
        with torch.no_grad(), routing(state):
            try:
                model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], use_cache=False)
            except QueryCaptured:
                pass
        assert state.queries is not None, "the query probe did not run"
        out.append(state.queries)
    return torch.cat(out)


def capture_token_states(
    model: nn.Module, tokenizer, prompts: Sequence[str], layer: int, device: torch.device, batch_size: int = 32
) -> list[torch.Tensor]:
    """Per prompt, the (tokens, d) input hidden states of decoder `layer` (layers above not run)."""
    out: list[torch.Tensor] = []
    for i in range(0, len(prompts), batch_size):
        enc = encode_batch(tokenizer, prompts[i : i + batch_size])
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        hidden = hidden_at_layer(model, layer, ids, mask).float()
        out += [h[: int(m.sum())] for h, m in zip(hidden, mask, strict=True)]
    return out


def pad_token_states(states: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, d) right-padded states and their (B, T) mask, from `capture_token_states` output."""
    padded = nn.utils.rnn.pad_sequence(list(states), batch_first=True)
    lengths = torch.tensor([len(h) for h in states], device=padded.device)
    mask = (torch.arange(padded.shape[1], device=padded.device) < lengths[:, None]).long()
    return padded, mask
