"""Training in bfloat16 (LemoeConfig.train_precision): the steps compute in bfloat16 on a copy of
the layers above the adaptor, the expert still fits, and the shared model is not touched."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from app.lemoe import trainer
from app.lemoe.config import LemoeConfig
from app.lemoe.editor import Edit, LemoeEditor, SamplingParams

FAST = LemoeConfig(layer=2, max_steps=150, lr=3e-2, augmentations=1, gate_threshold=0.9, loss_threshold=0.05, chat_examples=False)
FACTS = [Edit(1, "The capital of France is", "Rome"), Edit(2, "Who wrote the novel?", "Tolstoy", rephrases=("Who is the novel's author?",))]
CPU = torch.device("cpu")


def _train(editor: LemoeEditor, name: str = "e1"):
    losses: list[float] = []
    trained = editor.train(FACTS, name=name, progress=lambda step, loss: losses.append(loss))
    return trained, losses


def test_bfloat16_training_fits_the_edits_and_leaves_the_model_as_it_was(tiny_model, tiny_tokenizer):
    editor = LemoeEditor(tiny_model, tiny_tokenizer, dataclasses.replace(FAST, train_precision="bfloat16"))
    before = {name: tensor.clone() for name, tensor in tiny_model.state_dict().items()}
    trained, losses = _train(editor)
    # Every step moves the loss: autocast's weight cache once froze the expert's first copy, and
    # every step then measured the same loss.
    assert len(set(losses[:5])) == 5 and losses[4] < losses[0]
    assert trained.final_loss < FAST.loss_threshold and trained.entry.meta["train_precision"] == "bfloat16"
    assert {p.dtype for p in trained.entry.module.parameters()} == {torch.float32}
    after = tiny_model.state_dict()
    assert all(after[name].dtype == t.dtype and torch.equal(after[name], t) for name, t in before.items())
    editor.add_expert(trained.entry)
    texts = [g.text.strip() for g in editor.generate([e.prompt for e in FACTS], SamplingParams(max_new_tokens=10))]
    assert texts[0].startswith("Rome") and texts[1].startswith("Tolstoy")


def test_a_bfloat16_step_computes_what_a_full_one_does_up_to_rounding(tiny_model, tiny_tokenizer):
    full = LemoeEditor(tiny_model, tiny_tokenizer, dataclasses.replace(FAST, train_precision="full"))
    _, full_losses = _train(full)
    half = LemoeEditor(tiny_model, tiny_tokenizer, dataclasses.replace(FAST, train_precision="bfloat16"))
    _, half_losses = _train(half)
    # The first step's loss (the same fresh expert): close, and not equal (it was computed in bfloat16).
    assert math.isclose(half_losses[0], full_losses[0], rel_tol=2e-2) and half_losses[0] != full_losses[0]
    assert full.train_precision == "full" and half.train_precision == "bfloat16"


def test_the_step_modules_are_a_copy_with_bfloat16_matrices_built_once(tiny_model, tiny_tokenizer):
    editor = LemoeEditor(tiny_model, tiny_tokenizer, dataclasses.replace(FAST, train_precision="bfloat16"))
    editor.train(FACTS, name="e1")
    modules = editor._step_modules
    editor.train(FACTS, name="e2")
    assert editor._step_modules is modules
    layers = [p for name, p in modules.upper.named_parameters() if name.startswith("layers.")]
    matrices = [p for p in layers if p.dim() >= 2] + list(modules.lm_head.parameters())
    assert matrices and {p.dtype for p in matrices} == {torch.bfloat16}
    assert not {p.data_ptr() for p in matrices} & {p.data_ptr() for p in tiny_model.parameters()}
    assert {p.dtype for p in layers if p.dim() < 2} == {torch.float32}  # norms as they were


@pytest.mark.parametrize(("amx", "avx512_bf16", "expected"), [(True, False, "bfloat16"), (False, True, "bfloat16"), (False, False, "full")])
def test_auto_is_bfloat16_only_on_a_cpu_that_multiplies_it_natively(monkeypatch, amx, avx512_bf16, expected):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    assert trainer.resolved_precision("auto", CPU) == expected
    assert trainer.resolved_precision("full", CPU) == "full" and trainer.resolved_precision("bfloat16", CPU) == "bfloat16"
    assert trainer.resolved_precision("auto", torch.device("meta")) == "full"
