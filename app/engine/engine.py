"""The engine: one loaded model + its LEMoE stack, shared by the API and the training worker."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from app.engine.checks import ExpertCheck, check_candidate, nearest_live_edits
from app.engine.experts import ExpertLoader, ExpertSpec, check_expert_files
from app.engine.model_loader import LoadedModel, load_model
from app.engine.scheduler import Scheduler
from app.engine.stack import ActiveStack
from app.lemoe.batching import RowRequest
from app.lemoe.config import LemoeConfig
from app.lemoe.editor import Edit, Generation, LemoeEditor, SamplingParams
from app.lemoe.expert import ExpertEntry
from app.lemoe.io import ExpertFileError, save_expert
from app.lemoe.stopping import StopReason, StopSignal
from app.lemoe.subjects import InferredSubject
from app.lemoe.text import chat_prompt, has_chat_template

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, float], None]  # (step, loss)


@dataclass(frozen=True)
class BuiltExpert:
    name: str
    path: Path
    sha256: str
    edit_ids: list[int]
    steps: int
    final_loss: float
    seconds: float
    # (new edit id, older edit id): the older edit is no longer served on the new edit's prompt.
    superseded: tuple[tuple[int, int], ...] = ()
    # The trained expert itself, for the check before it goes live (None: read from its files).
    entry: ExpertEntry | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class RouteThresholds:
    """What a prompt must reach for an expert to serve it (the editor's config)."""

    gate: float  # route score (centred cosine to the nearest anchor) of an edit without a subject key
    # An edit with a subject key fires on its subject match, its relation match and a route score
    # of at least sentence_floor instead; all three None: subject keys off.
    subject: float | None
    relation: float | None  # None also when there is no relation check
    sentence_floor: float | None
    span: float | None = None  # the whole-subject match such an edit also needs; None: no span check


class Engine:
    """Thread-safe facade: generation runs concurrently with training; `stack` (the one owner of
    the live stack) swaps it atomically, with files loaded and checked by `experts`."""

    def __init__(self, loaded: LoadedModel, config: LemoeConfig, experts_dir: Path, *, max_batch: int = 16, max_waiting: int = 64) -> None:
        self.loaded = loaded
        self.experts_dir = experts_dir
        self.editor = LemoeEditor(loaded.model, loaded.tokenizer, config, device=loaded.device)
        self.experts = ExpertLoader(self.editor.serving, device=loaded.device)
        self.stack = ActiveStack(self.editor, self.experts)
        # Concurrent generations decode together: one batch, one thread (started on first use).
        self.scheduler = Scheduler(self.editor, max_batch=max_batch, max_waiting=max_waiting)

    @classmethod
    def from_settings(cls, settings) -> Engine:
        # Setting -> editor field; None keeps the editor's default.
        overrides = {}
        for setting, key in (
            ("adaptor_layer", "layer"),
            ("gate_threshold", "gate_threshold"),
            ("subject_keys", "subject_keys"),
            ("subject_threshold", "subject_threshold"),
            ("infer_subjects", "infer_subjects"),
            ("relation_threshold", "relation_threshold"),
            ("relation_token_weights", "relation_token_weights"),
            ("relation_rank_weight", "relation_rank_weight"),
            ("subject_span_threshold", "subject_span_threshold"),
            ("subject_token_check", "subject_token_check"),
            ("train_max_steps", "max_steps"),
            ("train_augmentations", "augmentations"),
            ("train_loss_threshold", "loss_threshold"),
            ("train_chat_examples", "chat_examples"),
            ("edit_codes", "edit_codes"),
            ("expert_positions", "expert_positions"),
            ("train_precision", "train_precision"),
            ("train_warmup_loss", "warmup_loss"),
        ):
            value = getattr(settings, setting, None)
            if value is not None:
                overrides[key] = value
        if getattr(settings, "relation_keys", True) is False:
            overrides["relation_threshold"] = None
        if getattr(settings, "subject_span_keys", True) is False:
            overrides["subject_span_threshold"] = None
        if getattr(settings, "train_warmup", True) is False:
            overrides["warmup_loss"] = None
        loaded = load_model(settings.model_path, cache_dir=settings.model_cache_dir, device=settings.device)
        engine = cls(
            loaded,
            replace(LemoeConfig(), **overrides),
            settings.experts_dir,
            max_batch=settings.max_batch_size,
            max_waiting=settings.max_waiting_generations,
        )
        engine.warm_up()
        return engine

    @property
    def model_name(self) -> str:
        return self.loaded.name

    @property
    def device(self) -> str:
        return str(self.loaded.device)

    @property
    def thresholds(self) -> RouteThresholds:
        config = self.editor.config
        if not config.subject_keys:
            return RouteThresholds(config.gate_threshold, None, None, None)
        return RouteThresholds(
            config.gate_threshold,
            config.subject_threshold,
            config.relation_threshold,
            config.subject_sentence_floor,
            config.subject_span_threshold,
        )

    def warm_up(self) -> None:
        """The first generate in a process is slow; pay it at start-up, not on a user's request."""
        self.editor.generate(["Hello"], SamplingParams(max_new_tokens=2), stack=())

    # --- validation (raises ValueError with a message fit for a 4xx) ---------------------
    def validate_edits(self, pairs: Sequence[tuple[str, str]]) -> list[str | None]:
        """Per (prompt, target) pair: None, or why the model cannot learn it (as validate_edit)."""
        return self.editor.validate_edits(pairs)

    def validate_subject(self, prompt: str, subject: str) -> None:
        self.editor.validate_subject(prompt, subject)

    def validate_prompt(self, prompt: str, max_new_tokens: int) -> int:
        """The prompt's length in tokens; ValueError when it and max_new_tokens do not fit."""
        return self.editor.validate_prompt(prompt, max_new_tokens)

    # --- serving -----------------------------------------------------------------------------
    def generate(self, prompt: str, params: SamplingParams = SamplingParams(), *, stop: StopSignal | None = None) -> Generation:
        """`stop` ends the generation early (caller gone, deadline passed); see `stop_reason`."""
        return self.scheduler.run(RowRequest(prompt, params, self.editor.stack, stop=stop))

    def complete(
        self,
        prompt: str,
        params: SamplingParams = SamplingParams(),
        *,
        route_on: str | None = None,
        edits: bool = True,
        stop: StopSignal | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> Generation:
        """Continue `prompt` on the route that `route_on` (default: the prompt) takes, decided
        before the first token and held for all; `edits=False` answers with the base model.
        `on_text` receives the text as it is generated (pieces that add up to `text`)."""
        stack = self.editor.stack if edits else ()
        return self.scheduler.run(RowRequest(prompt, params, stack, route_on=route_on, stop=stop, on_text=on_text))

    def chat_prompt(self, messages: Sequence[tuple[str, str]]) -> str:
        """The model's own chat template around (role, content) messages, ready for the
        assistant's reply; ValueError when the model has none."""
        if not has_chat_template(self.loaded.tokenizer):
            raise ValueError(f"the model {self.model_name} has no chat template; use /v1/completions")
        return chat_prompt(self.loaded.tokenizer, messages)

    # --- training ------------------------------------------------------------------------------
    def infer_subjects(self, edits: Sequence[Edit]) -> dict[int, InferredSubject]:
        """The subject the base model names (a span of the prompt) for each edit that has none,
        by edit id; a subject already given is never replaced. Empty when subject keys or
        subject inference are off."""
        _, found = self.editor.complete_subjects(edits)
        return found

    def plan(self, edits: Sequence[Edit], *, batch_size: int, planning: bool = True) -> list[list[Edit]]:
        return self.editor.plan(list(edits), batch_size=batch_size, planning=planning)

    def build_expert(self, name: str, edits: Sequence[Edit], progress: ProgressFn | None = None) -> BuiltExpert:
        """Train one expert and write its files; it is not live until the stack includes it."""
        trained = self.editor.train(list(edits), name=name, progress=progress)
        path = self.experts_dir / name
        try:
            sha = save_expert(trained.entry, path)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)  # half written: no row can name it
            raise
        self.experts.remember(trained.entry)
        superseded = tuple(self.editor.superseded(list(edits), trained.entry))
        return BuiltExpert(
            name, path, sha, [e.edit_id for e in edits], trained.steps, trained.final_loss, trained.seconds, superseded, trained.entry
        )

    @property
    def max_steps(self) -> int:
        """The most steps one expert trains for, a warm-up's included (it stops earlier at its loss
        threshold)."""
        return self.editor.config.step_limit

    # --- the check before an expert goes live (app.engine.checks) ------------------------------
    def _candidate(self, built: BuiltExpert) -> ExpertEntry:
        return built.entry if built.entry is not None else self.experts.load(ExpertSpec(built.name, built.path, built.sha256))

    def nearest_live_edits(self, built: BuiltExpert, *, limit: int, without: Collection[str] = ()) -> list[int]:
        """Up to `limit` live edits (ids) nearest to the new expert's, less its own and those it
        supersedes: the ones whose answers it is most likely to change."""
        exclude = set(built.edit_ids) | {old for _, old in built.superseded}
        return nearest_live_edits(self.editor, self._candidate(built), limit=limit, exclude=exclude, without=without)

    def check_expert(
        self, built: BuiltExpert, edits: Sequence[Edit], others: Sequence[Edit], *, without: Collection[str] = ()
    ) -> ExpertCheck:
        """Measure the new expert against the live stack before it goes live (nothing changes);
        `without`: experts it replaces, left out of the stack with it."""
        return check_candidate(self.editor, self._candidate(built), edits, others, without=without)

    def discard_expert(self, built: BuiltExpert) -> None:
        """Forget an expert that will not go live and remove its folder; OSError when it stays."""
        self.experts.forget(built.name)
        try:
            shutil.rmtree(built.path)
        except FileNotFoundError:
            pass


__all__ = [
    "BuiltExpert",
    "ExpertCheck",
    "Engine",
    "Edit",
    "ExpertFileError",
    "ExpertSpec",
    "Generation",
    "SamplingParams",
    "InferredSubject",
    "ProgressFn",
    "RouteThresholds",
    "StopReason",
    "StopSignal",
    "check_expert_files",
]
