"""Hyper-parameters of the LEMoE editor (one frozen dataclass, saved beside every expert)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Pooling = Literal["mean", "last", "mean_last"]
ExpertKind = Literal["ffn", "lowrank"]
ExpertPositions = Literal["answer", "all"]
TrainPrecision = Literal["auto", "full", "bfloat16"]


@dataclass(frozen=True)
class LemoeConfig:
    # Decoder layer whose MLP carries the adaptor; None: 80% of the depth (24 of 30 for SmolLM2).
    layer: int | None = None
    # Layer whose MLP input gives the routing query; None: the adaptor layer.
    route_layer: int | None = None
    expert_kind: ExpertKind = "ffn"
    expert_hidden: int = 128
    pooling: Pooling = "mean"
    # Cosine (after centring) a query needs with some anchor for any expert to fire.
    gate_threshold: float = 0.55
    # Anchors this close to the best one count as the same fact: the newest expert wins.
    supersede_margin: float = 0.02
    # Subject keys, for edits that name their subject: such an edit fires only for prompts whose
    # tokens match the subject's (standardised cosine >= subject_threshold) on the input of
    # `subject_layer` (None: 20% of the depth, 6 of 30 for SmolLM2). Sentence keys alone let
    # near neighbours ("the CEO of Beta" beside an edit of "the CEO of Acme") through the gate.
    subject_keys: bool = True
    subject_layer: int | None = None
    subject_threshold: float = 0.75
    # ... and the prompt's sentence query must still be this close to the edit's (centred cosine):
    # mentioning the subject in an unrelated question is not enough.
    subject_sentence_floor: float = 0.4
    # Relation keys: an edit with a subject key fires only where the prompt's other tokens (its
    # subject's left out; standardised subject-layer states, averaged) are this close (cosine) to
    # the edit prompt's: another question about the same subject does not get the edit's answer.
    # None: no relation check.
    relation_threshold: float | None = 0.3
    # ... with each token weighted by its rarity (`app.lemoe.text.token_rarity`: the tokenizer's
    # merge order), so that "What disease did X have?" and "What team is X on?" differ in "disease"
    # and "team" more than they agree in "What ... X ...?". False: a plain mean.
    relation_token_weights: bool = True
    # Among the anchors that may fire, the route score less this times what a relation-checked
    # anchor's relation cosine falls short of 1 wins: "Ramalinaceae: which family does it belong
    # to?" reads as near another edited question about Ramalinaceae as its own, and the relation
    # key tells them apart (ZsRE dev T = 600, subject-first probes reaching their own edit 0.892
    # -> 0.945; 0.5 and more gain little and lose paraphrases; docs/BENCHMARKS.md). 0: the route
    # score alone.
    relation_rank_weight: float = 0.25
    # Subject span keys: the subject key is one token's state, and subjects that end alike
    # ("Nenad Stamenković" / "Ivica Ančić", "BBC Radio" / "BBC One") match on it; such an edit
    # also needs the mean of the prompt's tokens ending at the matched one (as many as its
    # subject has; standardised subject-layer states) within this cosine of the mean of its own
    # subject's tokens. None: no span check.
    subject_span_threshold: float | None = 0.6
    # Subject token check: ... and the prompt's tokens ending at the match must be the edit
    # subject's own token ids (in the lower-cased subject view below: any case, first in the prompt
    # or not). States that are only alike let other names in, more of them the more edits there
    # are (CounterFact T = 10,000: 4.6% of near neighbours that name no edited subject; BENCHMARKS).
    subject_token_check: bool = True
    # Edits sent without a subject get one the base model picks among the prompt's spans
    # (app.lemoe.subjects), so they have subject and relation keys too.
    infer_subjects: bool = True
    # Subject states (the keys at training, the requests' tokens at inference: one function for
    # both) are read from "<subject_context> <prompt>", so a subject at the start of a prompt is
    # not the sequence's first token (whose state carries no context) and keeps its leading space;
    # "" reads the prompt alone, whose first token then never matches. subject_lowercase reads the
    # lower-cased text, so "france's capital" matches a key made on "France".
    subject_context: str = "Q:"
    subject_lowercase: bool = True
    lr: float = 5e-2
    max_steps: int = 25
    loss_threshold: float = 0.05
    # Train first on the edits' own prompts alone (a third of the labelled tokens: cheaper steps)
    # until their loss is below this, then on every example; None: every example from the start.
    # 1.0: 11-28% less training time, lifelong quality about the same (docs/BENCHMARKS.md).
    warmup_loss: float | None = 1.0
    # Extra copies of each edit prompt behind a random context prefix (generalisation).
    augmentations: int = 1
    train_eos: bool = True
    # Each edit is also trained as the user turn of the model's own chat template (when it has
    # one), its target as the assistant's reply: a chat is routed on its user message, and without
    # this the expert only knows to continue the bare prompt.
    chat_examples: bool = True
    # Examples that share a prefix (the chat forms share the template's system prompt) train in one
    # packed row that computes the prefix once: the same loss as padded rows, 18% less CPU per
    # expert (docs/BENCHMARKS.md). False: padded rows, for comparison.
    train_packing: bool = True
    # Edit codes: each expert also learns one code per edit, added to its hidden layer where the
    # answer is read (from the prompt's last token on); a routed request gets the code of the edit
    # whose anchor routed it. The expert then answers with that edit's fact however the prompt
    # words it, instead of with a neighbour's whose prompt reads alike (docs/BENCHMARKS.md).
    # `edit_code_lr`: the codes' own learning rate, high so that they outweigh the prompt's states.
    edit_codes: bool = True
    edit_code_lr: float = 1.0
    # Where an expert adds to the adaptor layer's output: "answer", only where the answer is read
    # (from the prompt's last token on, as the codes); "all", at every token. "answer" trains with
    # 43% less CPU per edit (the other tokens' states above the adaptor are fixed, so computed
    # once per expert) at the same quality (docs/BENCHMARKS.md). Recorded in each expert's meta.
    expert_positions: ExpertPositions = "answer"
    # What training computes in above the adaptor layer (and in its once-per-expert pass below):
    # "full", the model's own dtype; "bfloat16", a bfloat16 copy of the layers above the adaptor
    # and of the vocabulary projection under autocast, the expert's weights and optimiser in
    # float32 (serving is not touched); "auto", bfloat16 where the device multiplies it natively
    # (a CPU with AMX or AVX512-BF16, a CUDA GPU), full elsewhere (bfloat16 is slower without).
    train_precision: TrainPrecision = "auto"
    seed: int = 0

    @property
    def warmup_steps_limit(self) -> int:
        """The most warm-up steps an expert takes before its max_steps on every example (0 without a
        warm-up): the warm-up ends at its loss or after half of max_steps, whichever comes first."""
        return 0 if self.warmup_loss is None else max(1, self.max_steps // 2)

    @property
    def step_limit(self) -> int:
        """The most steps one expert trains for (it stops earlier at its loss threshold)."""
        return self.max_steps + self.warmup_steps_limit

    def resolved_layer(self, num_layers: int) -> int:
        layer = round(num_layers * 0.8) if self.layer is None else self.layer
        if not 0 <= layer < num_layers:
            raise ValueError(f"adaptor layer {layer} out of range; the model has {num_layers} layers")
        return layer

    def resolved_route_layer(self, num_layers: int) -> int:
        layer = self.resolved_layer(num_layers)
        route = layer if self.route_layer is None else self.route_layer
        if not 0 <= route <= layer:
            raise ValueError(f"route layer {route} must be between 0 and the adaptor layer {layer}")
        return route

    def resolved_subject_layer(self, num_layers: int) -> int:
        route = self.resolved_route_layer(num_layers)
        layer = min(round(num_layers * 0.2), route) if self.subject_layer is None else self.subject_layer
        # The route is decided at the route layer, so the subject states must exist by then.
        if not 0 <= layer <= route:
            raise ValueError(f"subject layer {layer} must be between 0 and the route layer {route}")
        return layer

    def serving(self, num_layers: int, hidden_size: int) -> ServingConfig:
        """What decides how an expert trained under this config serves on a model of
        `num_layers` layers and width `hidden_size`."""
        return ServingConfig(
            layer=self.resolved_layer(num_layers),
            route_layer=self.resolved_route_layer(num_layers),
            subject_layer=self.resolved_subject_layer(num_layers) if self.subject_keys else None,
            pooling=self.pooling,
            hidden_size=hidden_size,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# (field, how a refusal names it); each is recorded in an expert's meta when it is trained.
_SERVING_FIELDS = (
    ("layer", "adaptor layer (LEMOE_ADAPTOR_LAYER)"),
    ("route_layer", "route layer"),
    ("subject_layer", "subject layer"),
    ("pooling", "query pooling"),
    ("hidden_size", "hidden size"),
)


@dataclass(frozen=True)
class ServingConfig:
    """The resolved LemoeConfig fields an expert only serves correctly under: it is trained at
    `layer` and routed by queries pooled (`pooling`) at `route_layer` and by subject keys read at
    `subject_layer` (None: subject keys off). Saved in every expert's meta; an expert whose
    recorded values differ from the running editor's is refused, not served at the wrong layer."""

    layer: int
    route_layer: int
    subject_layer: int | None
    pooling: str
    hidden_size: int

    def to_meta(self) -> dict[str, Any]:
        return {name: value for name, value in asdict(self).items() if value is not None}

    def mismatch(self, meta: dict[str, Any]) -> str | None:
        """Why an expert with `meta` cannot serve under this config, or None. A field the
        expert did not record (saved before it was recorded) is not checked, nor the subject
        layer when either side has no subject keys (such keys are not read)."""
        problems = []
        for name, label in _SERVING_FIELDS:
            recorded, running = meta.get(name), getattr(self, name)
            if recorded is None or running is None or recorded == running:
                continue
            problems.append(f"{label} {recorded!r}, this server runs {running!r}")
        if not problems:
            return None
        return f"trained for {'; '.join(problems)}; restore the setting or train its edits again"
