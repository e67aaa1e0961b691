"""A warm-up (LemoeConfig.warmup_loss): an expert's first steps train on its edits' own prompts
alone, then on every example (the prefixed copies, the chat forms, rephrases)."""

from __future__ import annotations

import dataclasses
import math

from app.lemoe.config import LemoeConfig
from app.lemoe.editor import Edit, LemoeEditor, SamplingParams

FAST = LemoeConfig(
    layer=2, max_steps=150, lr=3e-2, augmentations=1, gate_threshold=0.9, loss_threshold=0.05, chat_examples=False, warmup_loss=None
)
FACTS = [Edit(1, "The capital of France is", "Rome"), Edit(2, "Who wrote the novel?", "Tolstoy", rephrases=("Who is the novel's author?",))]


def _losses(editor: LemoeEditor, edits, name: str = "e1"):
    losses: list[float] = []
    trained = editor.train(edits, name=name, progress=lambda step, loss: losses.append(loss))
    return trained, losses


def test_a_warm_up_trains_the_own_prompts_alone_then_every_example(tiny_model, tiny_tokenizer):
    warm = LemoeEditor(tiny_model, tiny_tokenizer, dataclasses.replace(FAST, warmup_loss=0.5))
    trained, losses = _losses(warm, FACTS)
    # The edits' own prompts alone: no prefixed copy, no rephrase.
    own_only = LemoeEditor(tiny_model, tiny_tokenizer, dataclasses.replace(FAST, augmentations=0))
    _, own_losses = _losses(own_only, [dataclasses.replace(e, rephrases=()) for e in FACTS])
    warm_steps = next(k for k, loss in enumerate(own_losses) if loss < 0.5) + 1
    assert warm_steps >= 2  # the check below compares steps of the warm-up
    assert all(math.isclose(a, b, rel_tol=1e-4) for a, b in zip(losses[:warm_steps], own_losses[:warm_steps], strict=True))
    # Then every example: the loss rises (the copies and the rephrase are new) and training goes
    # on until that loss is below the threshold.
    assert losses[warm_steps] > losses[warm_steps - 1]
    assert trained.steps == len(losses) > warm_steps and trained.final_loss < FAST.loss_threshold
    assert trained.steps <= warm.config.step_limit == FAST.max_steps + FAST.max_steps // 2

    warm.add_expert(trained.entry)
    texts = [g.text.strip() for g in warm.generate([e.prompt for e in FACTS], SamplingParams(max_new_tokens=10))]
    assert texts[0].startswith("Rome") and texts[1].startswith("Tolstoy")


def test_without_a_warm_up_every_example_trains_from_the_first_step(tiny_model, tiny_tokenizer):
    plain = LemoeEditor(tiny_model, tiny_tokenizer, FAST)
    _, losses = _losses(plain, FACTS)
    warm = LemoeEditor(tiny_model, tiny_tokenizer, dataclasses.replace(FAST, warmup_loss=0.5))
    _, warm_losses = _losses(warm, FACTS)
    assert losses[0] != warm_losses[0]  # the first step's loss is over more examples
    assert losses[-1] < FAST.loss_threshold


def test_a_warm_up_that_does_not_reach_its_loss_ends_after_half_of_max_steps(tiny_model, tiny_tokenizer):
    config = dataclasses.replace(FAST, max_steps=6, warmup_loss=1e-9, loss_threshold=1e-9)
    trained, losses = _losses(LemoeEditor(tiny_model, tiny_tokenizer, config), FACTS)
    # 3 warm-up steps (their loss never reaches 1e-9), then max_steps on every example.
    assert config.warmup_steps_limit == 3 and trained.steps == len(losses) == config.step_limit == 9
