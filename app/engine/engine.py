"""The engine: one loaded model + its LEMoE stack, shared by the API and the training worker."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from app.engine.experts import ExpertLoader, ExpertSpec, check_expert_files
from app.engine.model_loader import LoadedModel, load_model
from app.engine.stack import ActiveStack
from app.lemoe.config import LemoeConfig
from app.lemoe.editor import Edit, LemoeEditor
from app.lemoe.editor import SamplingParams as GenerationParams
from app.lemoe.io import ExpertFileError, save_expert
from app.lemoe.stopping import StopReason, StopSignal
from app.lemoe.subjects import InferredSubject

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, float], None]  # (step, loss)


@dataclass(frozen=True)
class EngineEdit:
    edit_id: int
    prompt: str
    target: str
    rephrases: tuple[str, ...] = ()
    subject: str | None = None


@dataclass(frozen=True)
class GenerationResult:
    prompt: str
    text: str
    expert_name: str | None  # None: the gate stayed shut and the base model answered
    route_score: float | None  # centred cosine to the nearest edit anchor
    nearest_edit_id: int | None
    subject_score: float | None  # the serving edit's subject match, when it has a subject key
    completion_tokens: int
    stop_reason: StopReason = StopReason.LENGTH  # CANCELLED / DEADLINE: the text is cut short


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


def _edit_id(raw: str | None) -> int | None:
    return int(raw) if raw and raw.isdigit() else None


class Engine:
    """Thread-safe facade: generation runs concurrently with training; `stack` (the one owner of
    the live stack) swaps it atomically, with files loaded and checked by `experts`."""

    def __init__(self, loaded: LoadedModel, config: LemoeConfig, experts_dir: Path) -> None:
        self.loaded = loaded
        self.experts_dir = experts_dir
        self.editor = LemoeEditor(loaded.model, loaded.tokenizer, config, device=loaded.device)
        self.experts = ExpertLoader(self.editor.serving, device=loaded.device)
        self.stack = ActiveStack(self.editor, self.experts)

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
            ("train_max_steps", "max_steps"),
            ("train_augmentations", "augmentations"),
            ("train_loss_threshold", "loss_threshold"),
        ):
            value = getattr(settings, setting, None)
            if value is not None:
                overrides[key] = value
        if getattr(settings, "relation_keys", True) is False:
            overrides["relation_threshold"] = None
        loaded = load_model(settings.model_path, cache_dir=settings.model_cache_dir, device=settings.device)
        engine = cls(loaded, replace(LemoeConfig(), **overrides), settings.experts_dir)
        engine.warm_up()
        return engine

    @property
    def model_name(self) -> str:
        return self.loaded.name

    @property
    def device(self) -> str:
        return str(self.loaded.device)

    def warm_up(self) -> None:
        """The first generate in a process is slow; pay it at start-up, not on a user's request."""
        self.editor.generate(["Hello"], GenerationParams(max_new_tokens=2), stack=())

    # --- validation (raises ValueError with a message fit for a 4xx) ---------------------
    def validate_edit(self, prompt: str, target: str) -> None:
        self.editor.validate_edit(prompt, target)

    def validate_subject(self, prompt: str, subject: str) -> None:
        self.editor.validate_subject(prompt, subject)

    def validate_prompt(self, prompt: str, max_new_tokens: int) -> None:
        self.editor.validate_prompt(prompt, max_new_tokens)

    # --- serving -----------------------------------------------------------------------------
    def generate(self, prompt: str, params: GenerationParams = GenerationParams(), *, stop: StopSignal | None = None) -> GenerationResult:
        """`stop` ends the generation early (caller gone, deadline passed); see `stop_reason`."""
        stack = self.editor.stack  # one snapshot for the whole request
        [g] = self.editor.generate([prompt], params, stack=stack, stop=stop)
        return self._result(g)

    def complete(
        self,
        prompt: str,
        params: GenerationParams = GenerationParams(),
        *,
        route_on: str | None = None,
        edits: bool = True,
        stop: StopSignal | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> GenerationResult:
        """Continue `prompt` on the route that `route_on` (default: the prompt) takes, decided
        before the first token and held for all; `edits=False` answers with the base model.
        `on_text` receives the text as it is generated (pieces that add up to `text`)."""
        stack = self.editor.stack if edits else ()
        [g] = self.editor.generate_routed_on(
            [prompt], [prompt if route_on is None else route_on], params, stack=stack, stop=stop, on_text=on_text
        )
        return self._result(g)

    def chat_prompt(self, messages: Sequence[tuple[str, str]]) -> str:
        """The model's own chat template around (role, content) messages, ready for the
        assistant's reply; ValueError when the model has none."""
        tokenizer = self.loaded.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"the model {self.model_name} has no chat template; use /v1/completions")
        return tokenizer.apply_chat_template(
            [{"role": role, "content": content} for role, content in messages],
            tokenize=False,
            add_generation_prompt=True,
        )

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` as a prompt (what a generation reads)."""
        return len(self.loaded.tokenizer(text)["input_ids"])

    def _result(self, g) -> GenerationResult:
        return GenerationResult(
            prompt=g.prompt,
            text=g.text,
            expert_name=g.route.expert_name,
            route_score=g.route.score,
            subject_score=g.route.subject_score,
            nearest_edit_id=_edit_id(g.route.nearest_edit_id),
            completion_tokens=g.completion_tokens,
            stop_reason=g.stop_reason,
        )

    # --- training ------------------------------------------------------------------------------
    def infer_subjects(self, edits: Sequence[EngineEdit]) -> dict[int, InferredSubject]:
        """The subject the base model names (a span of the prompt) for each edit that has none,
        by edit id; a subject already given is never replaced. Empty when subject keys or
        subject inference are off."""
        _, found = self.editor.complete_subjects([self._to_edit(e) for e in edits])
        return {int(edit_id): subject for edit_id, subject in found.items()}

    def plan(self, edits: Sequence[EngineEdit], *, batch_size: int, planning: bool = True) -> list[list[EngineEdit]]:
        by_id = {str(e.edit_id): e for e in edits}
        batches = self.editor.plan([self._to_edit(e) for e in edits], batch_size=batch_size, planning=planning)
        return [[by_id[e.edit_id] for e in batch] for batch in batches]

    def build_expert(self, name: str, edits: Sequence[EngineEdit], progress: ProgressFn | None = None) -> BuiltExpert:
        """Train one expert and write its files; it is not live until the stack includes it."""
        editor_edits = [self._to_edit(e) for e in edits]
        trained = self.editor.train(editor_edits, name=name, progress=progress)
        path = self.experts_dir / name
        sha = save_expert(trained.entry, path)
        self.experts.remember(trained.entry)
        superseded = tuple(
            (int(new), old_id) for new, old in self.editor.superseded(editor_edits, trained.entry) if (old_id := _edit_id(old)) is not None
        )
        return BuiltExpert(name, path, sha, [e.edit_id for e in edits], trained.steps, trained.final_loss, trained.seconds, superseded)

    @staticmethod
    def _to_edit(e: EngineEdit) -> Edit:
        return Edit(str(e.edit_id), e.prompt, e.target, tuple(e.rephrases), e.subject)


__all__ = [
    "BuiltExpert",
    "Engine",
    "EngineEdit",
    "ExpertFileError",
    "ExpertSpec",
    "GenerationParams",
    "GenerationResult",
    "InferredSubject",
    "ProgressFn",
    "StopReason",
    "StopSignal",
    "check_expert_files",
]
