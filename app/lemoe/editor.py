"""The LEMoE editor: a frozen causal LM with a growing stack of routed, frozen experts."""

from __future__ import annotations

import dataclasses
import functools
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from transformers import LogitsProcessorList, StoppingCriteriaList

from app.lemoe.config import LemoeConfig, TrainPrecision
from app.lemoe.decoding import SeededSampler, StopOnText, TextDeltas, completion_text, cut_at_stop
from app.lemoe.expert import Expert, ExpertEntry
from app.lemoe.layer import decoder_layers, inject_adaptor
from app.lemoe.planner import plan_batches
from app.lemoe.reference import CONTEXT_PREFIXES, REFERENCE_PROMPTS
from app.lemoe.routing import (
    AnchorRouter,
    RouteDecision,
    RouteState,
    SubjectKeys,
    SubjectTokens,
    anchor_edit_ids,
    anchor_owners,
    routing,
)
from app.lemoe.stopping import StopOnSignal, StopReason, StopSignal
from app.lemoe.subjects import InferredSubject, infer_subjects
from app.lemoe.text import (
    SubjectView,
    chat_prompt,
    check_text,
    encode_batch,
    encode_pair,
    has_chat_template,
    subject_token_span,
    subject_view,
    token_rarity,
)
from app.lemoe.trainer import (
    ProgressFn,
    StepModules,
    TrainingExample,
    augment,
    capture_queries,
    capture_token_states,
    pad_token_states,
    resolved_precision,
    train_expert,
)
from app.lemoe.types import Edit, SamplingParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Generation:
    prompt: str
    text: str
    route: RouteDecision
    completion_tokens: int
    stop_reason: StopReason = StopReason.LENGTH


@dataclass(frozen=True)
class SubjectAnchors:
    """Per anchor: subject key, relation key, span key (NaN rows: none), subject length in tokens
    and the subject's token ids (-1 after them; a row of -1: none)."""

    subject: torch.Tensor
    relation: torch.Tensor
    lengths: torch.Tensor
    span: torch.Tensor
    tokens: torch.Tensor


@dataclass(frozen=True)
class RouteInputs:
    """What routing reads of some prompts, independent of the stack (`LemoeEditor.read_routes`)."""

    queries: torch.Tensor
    states: torch.Tensor | None
    mask: torch.Tensor | None
    relation_weights: torch.Tensor | None
    tokens: SubjectTokens | None = None  # the states' tokens (LemoeEditor.subject_tokens)


@dataclass
class TrainedExpert:
    entry: ExpertEntry
    steps: int
    final_loss: float
    seconds: float
    meta: dict = field(default_factory=dict)


class LemoeEditor:
    """Owns the adaptor on one layer; the expert stack is an immutable tuple swapped atomically.

    The editor holds no lock: readers take one snapshot of `stack` per request, and a change is
    one assignment. Writers that may race (the service's) go through one owner that serialises
    them (`app.engine.stack.ActiveStack`)."""

    def __init__(self, model: nn.Module, tokenizer, config: LemoeConfig | None = None, *, device: torch.device | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or LemoeConfig()
        self.device = device or next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        n_layers = len(decoder_layers(model))
        self.layer = self.config.resolved_layer(n_layers)
        self.route_layer = self.config.resolved_route_layer(n_layers)
        self.hidden_size = model.config.hidden_size
        self.max_positions = getattr(model.config, "max_position_embeddings", None)
        self.subject_layer = self.config.resolved_subject_layer(n_layers) if self.config.subject_keys else None
        self.serving = self.config.serving(n_layers, self.hidden_size)  # recorded beside each expert
        model.requires_grad_(False)
        inject_adaptor(model, self.layer, self.route_layer, self.config.pooling)
        # A request's subject view is read twice on its way (its states, then its relation window):
        # tokenised once.
        self._subject_view = functools.lru_cache(maxsize=1024)(self._read_subject_view)
        center = capture_queries(model, tokenizer, REFERENCE_PROMPTS, self.device).mean(dim=0)
        self.router = AnchorRouter(
            center, self.config.gate_threshold, self.config.supersede_margin, self._subject_keys(), self.config.relation_rank_weight
        )
        self._stack: tuple[ExpertEntry, ...] = ()
        self._prefix_room = (
            max(len(tokenizer(p + " ", add_special_tokens=False)["input_ids"]) for p in CONTEXT_PREFIXES)
            if self.config.augmentations
            else 0
        )

    def _subject_keys(self) -> SubjectKeys | None:
        """Standardisation of subject-layer tokens, measured on the reference prompts."""
        if self.subject_layer is None:
            return None
        states, mask = self.subject_states(REFERENCE_PROMPTS)
        tokens = states[mask.bool()]  # the tokens that may match, as when matching
        return SubjectKeys(
            tokens.mean(0),
            tokens.std(0) + 1e-3,
            self.config.subject_threshold,
            self.config.subject_sentence_floor,
            self.config.relation_threshold,
            self.config.subject_span_threshold,
            self.config.subject_token_check,
        )

    def subject_states(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, d) subject-layer states of each prompt's `subject_view` (right-padded) and the
        (B, T) mask of the tokens that may match. Keys (training) and requests (routing) both come
        from here, so the two always read a prompt the same way."""
        views = [self._subject_view(p) for p in prompts]
        states, mask = pad_token_states(
            capture_token_states(self.model, self.tokenizer, [v.text for v in views], self.subject_layer, self.device)
        )
        for r, v in enumerate(views):
            mask[r, : v.first] = 0
        return states, mask

    def subject_tokens(self, prompts: Sequence[str], length: int) -> SubjectTokens:
        """The tokens of each prompt's subject view as `subject_states` reads them, right-padded to
        `length`: the token check compares a subject's ids with them."""
        ids = torch.full((len(prompts), length), -1, dtype=torch.long)
        word_ends = torch.ones((len(prompts), length), dtype=torch.bool)
        for r, p in enumerate(prompts):
            view = self._subject_view(p)
            n = min(len(view.ids), length)
            ids[r, :n] = torch.tensor(view.ids[:n], dtype=torch.long)
            word_ends[r, :n] = torch.tensor(view.word_ends[:n], dtype=torch.bool)
        return SubjectTokens(ids.to(self.device), word_ends.to(self.device))

    def relation_weights(self, prompts: Sequence[str], mask: torch.Tensor) -> torch.Tensor:
        """(B, T) what each token counts in a relation key: `mask` (from `subject_states(prompts)`)
        less the tokens before each prompt's last sentence, each weighted by its rarity where
        `relation_token_weights` is on (`token_rarity`)."""
        out = mask.float()
        for r, p in enumerate(prompts):
            view = self._subject_view(p)
            out[r, : view.last_sentence] = 0
            if self.config.relation_token_weights:
                n = min(len(view.ids), out.shape[1])
                out[r, :n] *= token_rarity(torch.tensor(view.ids[:n], device=out.device))
        return out

    def _read_subject_view(self, prompt: str) -> SubjectView:
        return subject_view(self.tokenizer, prompt, context=self.config.subject_context, lowercase=self.config.subject_lowercase)

    def _subject_span(self, prompt: str, subject: str | None) -> tuple[int, int] | None:
        return subject_token_span(
            self.tokenizer, prompt, subject, context=self.config.subject_context, lowercase=self.config.subject_lowercase
        )

    def infer_subjects(self, prompts: Sequence[str]) -> list[InferredSubject | None]:
        """For edits sent without a subject: the span of each prompt the base model names as its
        subject (`app.lemoe.subjects`), or None."""
        return infer_subjects(self.model, self.tokenizer, prompts, self.device)

    def complete_subjects(self, edits: Sequence[Edit]) -> tuple[list[Edit], dict[int, InferredSubject]]:
        """`edits`, those without a subject given the one the model infers (a client's subject
        always wins), and what was inferred by edit id. Unchanged when subject keys or
        `infer_subjects` are off."""
        missing = [e for e in edits if not (e.subject and e.subject.strip())]
        if self.subject_layer is None or not self.config.infer_subjects or not missing:
            return list(edits), {}
        found = {e.edit_id: s for e, s in zip(missing, self.infer_subjects([e.prompt for e in missing]), strict=True) if s is not None}
        return [dataclasses.replace(e, subject=found[e.edit_id].text) if e.edit_id in found else e for e in edits], found

    # --- the stack -----------------------------------------------------------------------
    @property
    def stack(self) -> tuple[ExpertEntry, ...]:
        return self._stack

    def add_expert(self, entry: ExpertEntry) -> None:
        if any(e.name == entry.name for e in self._stack):
            raise ValueError(f"expert {entry.name!r} is already in the stack")
        self._stack = self._stack + (self._prepared(entry),)
        self._index_stack()

    def prepared(self, entry: ExpertEntry) -> ExpertEntry:
        """`entry` as it would serve in this editor's stack (see `_prepared`), without adding it."""
        return self._prepared(entry)

    def _prepared(self, entry: ExpertEntry) -> ExpertEntry:
        """`entry` on this editor's device, as it serves here.

        Subject keys made under another subject view (experts from before subject views existed
        keyed the bare prompt) cannot be compared with this editor's request states: such an
        expert routes by its sentence keys alone (the 0.55 gate) until its edits are trained again.
        """
        entry.module.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)  # served in the model's dtype
        entry.anchors = entry.anchors.to(self.device)
        if entry.subject_anchors is not None:
            entry.subject_anchors = entry.subject_anchors.to(self.device)
        if entry.relation_anchors is not None:
            entry.relation_anchors = entry.relation_anchors.to(self.device)
        if entry.subject_span_anchors is not None:
            entry.subject_span_anchors = entry.subject_span_anchors.to(self.device)
        if entry.subject_token_ids is not None:
            entry.subject_token_ids = entry.subject_token_ids.to(self.device)
        view = {"context": self.config.subject_context, "lowercase": self.config.subject_lowercase}
        made = entry.meta.get("subject_view", {"context": "", "lowercase": False})
        if self.subject_layer is not None and _keyed(entry) and made != view:
            log.warning(
                "expert %s: its subject keys read prompts as %s, this editor as %s; its edits route "
                "by their wording alone until they are trained again",
                entry.name,
                made,
                view,
            )
            return dataclasses.replace(
                entry, subject_anchors=None, relation_anchors=None, subject_lengths=None, subject_span_anchors=None, subject_token_ids=None
            )
        return entry

    def remove_expert(self, name: str) -> ExpertEntry:
        found = [e for e in self._stack if e.name == name]
        if not found:
            raise KeyError(f"expert {name!r} is not in the stack")
        self._stack = tuple(e for e in self._stack if e.name != name)
        self._index_stack()
        return found[0]

    def set_stack(self, entries: Sequence[ExpertEntry]) -> None:
        self._stack = tuple(self._prepared(e) for e in entries)
        self._index_stack()

    def _index_stack(self) -> None:
        """Build the new live stack's anchor index now, in the thread that swaps it in, rather
        than in the first request that routes on it (seconds at 100K anchors unless it only
        gained experts: then the previous index is extended)."""
        if self._stack:
            self.router.index(self._stack)

    def serving_mismatch(self, entry: ExpertEntry) -> str | None:
        """Why `entry` cannot serve in this editor (trained at another adaptor layer, route
        layer, subject layer, pooling or width), or None; see `ServingConfig.mismatch`."""
        return self.serving.mismatch({"hidden_size": entry.module.down.in_features, **entry.meta})

    # --- input checks ----------------------------------------------------------------------
    def validate_edit(self, prompt: str, target: str) -> None:
        """Raise ValueError for edits the model cannot learn (empty, wrong type, too long)."""
        pair = encode_pair(self.tokenizer, prompt, target, eos=self.config.train_eos)
        # Training also sees the prompt behind a context prefix: leave room for the longest.
        total = len(pair.prompt_ids) + len(pair.target_ids) + self._prefix_room
        if self.max_positions is not None and total > self.max_positions:
            raise ValueError(f"prompt + target is {total} tokens; the model's context is {self.max_positions}")

    def validate_edits(self, pairs: Sequence[tuple[str, str]]) -> list[str | None]:
        """`validate_edit` for many (prompt, target) pairs with two tokenizer calls in all: per
        pair, None or why the model cannot learn it (the ValueError's message)."""
        problems: list[str | None] = [None] * len(pairs)
        texts = []
        for i, (prompt, target) in enumerate(pairs):
            try:  # what encode_pair checks before it tokenises
                check_text("prompt", prompt)
                check_text("target", target)
            except ValueError as exc:
                problems[i] = str(exc)
                continue
            texts.append((i, prompt, ("" if prompt[-1].isspace() or target[0].isspace() else " ") + target))
        if not texts or self.max_positions is None:
            return problems
        prompt_ids = self.tokenizer([t[1] for t in texts])["input_ids"]
        target_ids = self.tokenizer([t[2] for t in texts], add_special_tokens=False)["input_ids"]
        eos = 1 if self.config.train_eos and self.tokenizer.eos_token_id is not None else 0
        for (i, _, _), p, t in zip(texts, prompt_ids, target_ids, strict=True):
            total = len(p) + len(t) + eos + self._prefix_room
            if total > self.max_positions:
                problems[i] = f"prompt + target is {total} tokens; the model's context is {self.max_positions}"
        return problems

    def validate_subject(self, prompt: str, subject: str) -> None:
        """A subject keys routing, so it must be in the prompt (any case); the caller has checked
        that it is text, not blank."""
        if subject.strip().lower() not in prompt.lower():
            raise ValueError(
                f"{subject!r} does not appear in the prompt; the subject decides which prompts the "
                "edit fires on, so it must be named there (leave it out to route by the wording alone)"
            )

    def validate_prompt(self, prompt: str, max_new_tokens: int = 0) -> int:
        """The prompt's length in tokens (the one tokenisation a request's checks make); ValueError
        when it and `max_new_tokens` do not fit the model's context. The caller has checked that
        `prompt` is text, not blank."""
        tokens = len(self.tokenizer(prompt)["input_ids"])
        self._check_fits(tokens, max_new_tokens)
        return tokens

    def _check_fits(self, prompt_tokens: int, max_new_tokens: int) -> None:
        total = prompt_tokens + max_new_tokens
        if self.max_positions is not None and total > self.max_positions:
            raise ValueError(f"prompt + max_new_tokens is {total} tokens; the model's context is {self.max_positions}")

    # --- planning and training -------------------------------------------------------------
    def queries(self, prompts: Sequence[str]) -> torch.Tensor:
        return capture_queries(self.model, self.tokenizer, prompts, self.device)

    def plan(self, edits: Sequence[Edit], *, batch_size: int, planning: bool = True) -> list[list[Edit]]:
        if not edits:
            return []
        embeddings = self.router.normalise(self.queries([e.prompt for e in edits])).cpu().numpy()
        order = plan_batches(np.asarray(embeddings), batch_size=batch_size, planning=planning, random_state=self.config.seed)
        return [[edits[i] for i in batch] for batch in order]

    def train(self, edits: Sequence[Edit], *, name: str, progress: ProgressFn | None = None) -> TrainedExpert:
        """Train one new expert for `edits` (not yet in the stack: add_expert makes it live)."""
        if not edits:
            raise ValueError("cannot train an expert on no edits")
        for e in edits:
            self.validate_edit(e.prompt, e.target)
        rng = random.Random(f"{self.config.seed}:{name}")
        examples: list[TrainingExample] = []
        chat = self._chat_form if self.config.chat_examples and has_chat_template(self.tokenizer) else None
        for slot, e in enumerate(edits):
            examples += augment(TrainingExample(e.prompt, e.target, slot), e.rephrases, self.config, rng, chat=chat)
        result = train_expert(
            self.model,
            self.tokenizer,
            examples,
            config=self.config,
            layer=self.layer,
            hidden_size=self.hidden_size,
            device=self.device,
            progress=progress,
            step_modules=self._step_modules,
        )
        entry = self.keyed_entry(
            name,
            result.expert,
            edits,
            {
                "steps": result.steps,
                "final_loss": result.final_loss,
                "examples": result.examples,
                "expert_positions": self.config.expert_positions,
                "train_precision": self.train_precision,
            },
        )
        return TrainedExpert(entry, result.steps, result.final_loss, result.seconds, entry.meta)

    @functools.cached_property
    def train_precision(self) -> TrainPrecision:
        """`config.train_precision` as it resolves on this editor's device ("full" or "bfloat16")."""
        return resolved_precision(self.config.train_precision, self.device)

    @functools.cached_property
    def _step_modules(self) -> StepModules:
        """Built at the first training (a bfloat16 copy of the layers above the adaptor is ~90 MB
        for SmolLM2-135M), then kept: the model is frozen."""
        return StepModules.of(self.model, self.layer + 1, self.train_precision)

    def _chat_form(self, message: str) -> str:
        return chat_prompt(self.tokenizer, [("user", message)])

    def keyed_entry(self, name: str, module: Expert, edits: Sequence[Edit], meta: dict) -> ExpertEntry:
        """`module` as the expert of `edits`: their sentence anchors (each edit, then its
        rephrases), subject and relation keys, and `meta` with what the keys were made under."""
        anchors = self.queries([e.prompt for e in edits] + [r for e in edits for r in e.rephrases])
        anchor_ids = [e.edit_id for e in edits] + [e.edit_id for e in edits for _ in e.rephrases]
        keys = self.subject_anchors(edits)
        meta = {**self.serving.to_meta(), **meta}  # layer, route_layer, subject_layer, pooling, hidden_size
        if keys is not None:
            meta["subject_view"] = {"context": self.config.subject_context, "lowercase": self.config.subject_lowercase}
            meta["relation_token_weights"] = self.config.relation_token_weights
            meta["subject_keyed_edits"] = int((~torch.isnan(keys.subject[: len(edits)]).any(dim=1)).sum())
        return ExpertEntry(
            name=name,
            module=module,
            anchors=anchors,
            edit_ids=anchor_ids,
            meta=meta,
            subject_anchors=None if keys is None else keys.subject,
            relation_anchors=None if keys is None else keys.relation,
            subject_lengths=None if keys is None else keys.lengths,
            subject_span_anchors=None if keys is None else keys.span,
            subject_token_ids=None if keys is None else keys.tokens,
        )

    def subject_anchors(self, edits: Sequence[Edit]) -> SubjectAnchors | None:
        """Subject, span and relation keys in anchor order (each edit, then its rephrases, which
        share the edit's subject and span keys and have relation keys of their own where they
        name the subject).

        A NaN row: the edit names no subject, or its prompt does not contain it; that edit is
        routed by its sentence key alone. None when subject keys are off.
        """
        if self.subject_layer is None:
            return None
        prompts = [e.prompt for e in edits] + [r for e in edits for r in e.rephrases]
        subjects = [e.subject for e in edits] + [e.subject for e in edits for _ in e.rephrases]
        owner = list(range(len(edits))) + [i for i, e in enumerate(edits) for _ in e.rephrases]
        spans = [self._subject_span(p, s) for p, s in zip(prompts, subjects, strict=True)]
        n, d = len(prompts), self.hidden_size
        subject = torch.full((n, d), float("nan"), device=self.device)
        relation = torch.full((n, d), float("nan"), device=self.device)
        span_keys = torch.full((n, d), float("nan"), device=self.device)
        lengths = torch.zeros(n, dtype=torch.long)
        tokens = torch.full((n, max((s[1] - s[0] + 1 for s in spans if s is not None), default=1)), -1, dtype=torch.long)
        found = [k for k, span in enumerate(spans) if span is not None]
        if found:
            texts = [prompts[k] for k in found]
            states, mask = self.subject_states(texts)
            rows = torch.arange(len(found))
            last = torch.tensor([spans[k][1] for k in found])
            length = torch.tensor([spans[k][1] - spans[k][0] + 1 for k in found])
            vectors = self.router.subject.relation_vectors(states, self.relation_weights(texts, mask), rows, last, length)
            for row, k in enumerate(found):
                subject[k] = states[row, spans[k][1]]
                span_keys[k] = states[row, spans[k][0] : spans[k][1] + 1].float().mean(dim=0)
                lengths[k] = length[row]
                tokens[k, : length[row]] = torch.tensor(self._subject_view(prompts[k]).ids[spans[k][0] : spans[k][1] + 1])
                # A prompt that is all subject asks nothing else: no relation check for it.
                if bool(vectors[row].any()):
                    relation[k] = vectors[row]
        for k in range(len(edits), n):  # a rephrase keys on its edit's subject states
            subject[k], span_keys[k], tokens[k] = subject[owner[k]], span_keys[owner[k]], tokens[owner[k]]
            if spans[k] is None:
                relation[k], lengths[k] = relation[owner[k]], lengths[owner[k]]
        return SubjectAnchors(subject, relation, lengths, span_keys, tokens.to(self.device))

    def superseded(self, edits: Sequence[Edit], entry: ExpertEntry) -> list[tuple[int, int]]:
        """(new edit id, older edit id) pairs: on the new edit's own prompt an older edit of the
        live stack is near-equal and may fire, so the newest expert wins and the older edit is no
        longer served there. `entry` is the expert trained on `edits`, not yet live."""
        older = tuple(e for e in self._stack if e.name != entry.name)
        if not older or not edits:
            return []
        stack = older + (entry,)
        offset = sum(len(e.anchors) for e in older)
        owner, ids = anchor_owners(stack), anchor_edit_ids(stack)
        # The edits' own sentence queries are their anchors (listed first in the entry).
        queries = entry.anchors[: len(edits)]
        read = self.read_routes([e.prompt for e in edits], queries=queries)
        sims, eligible, _, relation_sims, _ = self.router.eligibility(
            queries, stack, read.states, read.mask, read.relation_weights, subject_tokens=read.tokens
        )
        sims = self.router.ranking(sims, relation_sims)  # as `route` decides between them
        own = sims[torch.arange(len(edits)), offset + torch.arange(len(edits))]
        near = eligible & (sims >= own[:, None] - self.config.supersede_margin) & (owner.to(sims.device) < len(older))
        pairs = []
        for r, k in near.nonzero().tolist():
            new, old = edits[r].edit_id, ids[k]
            if old is not None and old != new and (new, old) not in pairs:
                pairs.append((new, old))
        return pairs

    # --- inference -------------------------------------------------------------------------
    def _keyed_stack(self, stack: Sequence[ExpertEntry]) -> bool:
        """Whether routing on `stack` reads subject states (some edit has a subject key)."""
        return self.subject_layer is not None and bool(stack) and self.router.index(stack).any_keyed

    def route_state(
        self,
        query_mask: torch.Tensor,
        *,
        stack: Sequence[ExpertEntry] | None,
        forced: Sequence[RouteDecision] | None = None,
        prompts: Sequence[str] | None = None,
    ) -> RouteState:
        """The routing state of one batch; with `prompts`, their subject states too, when some
        edit of the stack has a subject key (one pass through the layers below the subject layer)."""
        stack = self._stack if stack is None else tuple(stack)
        state = RouteState(query_mask=query_mask, stack=stack, router=self.router, forced=forced)
        if prompts is not None and forced is None and self._keyed_stack(stack):
            state.subject_states, state.subject_mask, state.relation_weights, state.subject_tokens = self._read_subjects(prompts)
        return state

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[str],
        params: SamplingParams = SamplingParams(),
        *,
        stack: Sequence[ExpertEntry] | None = None,
        stop: StopSignal | None = None,
        forced: Sequence[RouteDecision] | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> list[Generation]:
        """Generate through the routed stack; the route is fixed on the prompt at prefill.

        `stop` ends the whole batch at the next token once it fires; each row's `stop_reason` says
        whether it finished (eos, length, a stop string) or was cut short (cancelled, deadline).
        `forced` takes the route of each row as given (see `generate_routed_on`); `on_text` (one
        prompt only) receives the text as it is generated, in pieces that add up to its `text`.
        """
        enc = encode_batch(self.tokenizer, prompts, side="left")
        self._check_fits(int(enc["attention_mask"].sum(dim=1).max()), params.max_new_tokens)  # the tokens it reads anyway
        enc = {k: v.to(self.device) for k, v in enc.items()}
        state = self.route_state(enc["attention_mask"], stack=stack, prompts=prompts, forced=forced)
        kwargs: dict = {"max_new_tokens": params.max_new_tokens, "do_sample": params.do_sample, "pad_token_id": self.tokenizer.pad_token_id}
        if params.do_sample and params.seed is not None:
            kwargs.update(
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                logits_processor=LogitsProcessorList(
                    [SeededSampler(params.seed, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)]
                ),
            )
        elif params.do_sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        criteria, criterion = [], None
        if stop is not None:
            criterion = StopOnSignal(stop)
            criteria.append(criterion)
        if params.stop:
            criteria.append(StopOnText(self.tokenizer, params.stop, enc["input_ids"].shape[1]))
        if criteria:
            kwargs["stopping_criteria"] = StoppingCriteriaList(criteria)
        eos = self.tokenizer.eos_token_id
        if on_text is not None:
            if len(prompts) != 1:
                raise ValueError("on_text streams one prompt at a time")
            kwargs["streamer"] = TextDeltas(self.tokenizer, on_text, stops=params.stop, eos=eos)
        with routing(state):
            out = self.model.generate(**enc, **kwargs)
        new = out[:, enc["input_ids"].shape[1] :]
        results = []
        for prompt, row, decision in zip(prompts, new, state.decisions or [], strict=True):
            tokens = row.tolist()
            if eos is not None and eos in tokens:
                tokens, reason = tokens[: tokens.index(eos)], StopReason.EOS
            elif len(tokens) >= params.max_new_tokens or criterion is None or criterion.fired is None:
                reason = StopReason.LENGTH
            else:
                reason = criterion.fired
            text, cut = cut_at_stop(completion_text(self.tokenizer, tokens), params.stop)
            if cut:
                reason = StopReason.STOP
            results.append(Generation(prompt, text, decision, len(tokens), reason))
        return results

    def route(self, texts: Sequence[str], *, stack: Sequence[ExpertEntry] | None = None) -> list[RouteDecision]:
        """The route each text takes, decided by the router as at a generation's prefill."""
        stack = self._stack if stack is None else tuple(stack)
        if not stack:
            return [RouteDecision(None, None, None, None) for _ in texts]
        return self._routed(self.read_routes(texts, subjects=self._keyed_stack(stack)), stack)

    def read_routes(self, texts: Sequence[str], *, subjects: bool | None = None, queries: torch.Tensor | None = None) -> RouteInputs:
        """What routing reads of `texts` (their queries and subject states), whatever the stack:
        read once, routed under any stack by `route_under`. `subjects` False: no subject states
        (None: where subject keys are on); `queries`: the texts' queries, already at hand."""
        states = mask = relation_weights = tokens = None
        if self.subject_layer is not None if subjects is None else subjects:
            states, mask, relation_weights, tokens = self._read_subjects(texts)
        return RouteInputs(self.queries(texts) if queries is None else queries, states, mask, relation_weights, tokens)

    def _read_subjects(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, SubjectTokens]:
        """What the subject checks read of `texts`: their subject states and mask, relation weights and tokens."""
        states, mask = self.subject_states(texts)
        return states, mask, self.relation_weights(texts, mask), self.subject_tokens(texts, states.shape[1])

    def _routed(self, read: RouteInputs, stack: Sequence[ExpertEntry]) -> list[RouteDecision]:
        return self.router.route(read.queries, stack, read.states, read.mask, read.relation_weights, subject_tokens=read.tokens)

    def route_under(self, texts: Sequence[str] | RouteInputs, stacks: Sequence[Sequence[ExpertEntry]]) -> list[list[RouteDecision]]:
        """The route each text takes under each of `stacks` (one list per stack), as `route` decides
        it; the texts are read once (or were, given as `read_routes`' result) for all the stacks."""
        if not isinstance(texts, RouteInputs) and not texts:
            return [[] for _ in stacks]
        read = texts if isinstance(texts, RouteInputs) else self.read_routes(texts)
        return [self._routed(read, tuple(s)) for s in stacks]

    def generate_routed_on(
        self,
        prompts: Sequence[str],
        route_texts: Sequence[str],
        params: SamplingParams = SamplingParams(),
        *,
        stack: Sequence[ExpertEntry] | None = None,
        stop: StopSignal | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> list[Generation]:
        """Generate from `prompts` (e.g. a chat template around a user's message) on the routes
        that `route_texts` (e.g. that message alone) take: decided first, held for every token."""
        stack = self._stack if stack is None else tuple(stack)
        decisions = self.route(route_texts, stack=stack)
        results = self.generate(prompts, params, stack=stack, stop=stop, on_text=on_text, forced=decisions)
        return [dataclasses.replace(g, route=d) for g, d in zip(results, decisions, strict=True)]

    @torch.inference_mode()
    def teacher_forced(
        self, prompts: Sequence[str], targets: Sequence[str], *, stack: Sequence[ExpertEntry] | None = None, batch_size: int = 32
    ) -> list[tuple[list[int], list[int], RouteDecision]]:
        """Per pair: (argmax predictions on the target positions, target ids, route)."""
        out = []
        for i in range(0, len(prompts), batch_size):
            pairs = [
                encode_pair(self.tokenizer, p, t) for p, t in zip(prompts[i : i + batch_size], targets[i : i + batch_size], strict=True)
            ]
            length = max(len(p.prompt_ids) + len(p.target_ids) for p in pairs)
            pad = self.tokenizer.pad_token_id or 0
            ids = torch.full((len(pairs), length), pad, dtype=torch.long)
            attn = torch.zeros_like(ids)
            qmask = torch.zeros_like(ids)
            for r, p in enumerate(pairs):
                seq = p.prompt_ids + p.target_ids
                ids[r, : len(seq)] = torch.tensor(seq)
                attn[r, : len(seq)] = 1
                qmask[r, : len(p.prompt_ids)] = 1
            state = self.route_state(qmask.to(self.device), stack=stack, prompts=prompts[i : i + batch_size])
            with routing(state):
                logits = self.model(input_ids=ids.to(self.device), attention_mask=attn.to(self.device), use_cache=False).logits
            preds = logits.argmax(-1).cpu()
            for r, p in enumerate(pairs):
                start = len(p.prompt_ids) - 1
                out.append((preds[r, start : start + len(p.target_ids)].tolist(), p.target_ids, state.decisions[r]))
        return out


def _keyed(entry: ExpertEntry) -> bool:
    """Whether some edit of the expert has a subject key (a row that is not NaN)."""
    return entry.subject_anchors is not None and bool((~torch.isnan(entry.subject_anchors).any(dim=1)).any())
