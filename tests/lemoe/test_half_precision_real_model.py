"""Experts stored in half precision answer as they did before the round trip through their files
(the real bundled SmolLM2-135M-Instruct, 16 ZsRE edits in one expert; CPU, a minute or two)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from app.engine.model_loader import load_model
from app.lemoe.config import LemoeConfig
from app.lemoe.editor import Edit, LemoeEditor, SamplingParams
from app.lemoe.io import WEIGHTS_FILE, load_expert, save_expert
from tests.real_model import MODEL_CACHE, zsre_records

pytestmark = pytest.mark.real_model


def _answers(editor: LemoeEditor, records: list[dict]) -> tuple[list, list[str]]:
    prompts = [r["src"] for r in records] + [r["rephrase"] for r in records]
    targets = [r["alt"] for r in records] * 2
    forced = [(preds, route.expert_name) for preds, _, route in editor.teacher_forced(prompts, targets)]
    greedy = [g.text for g in editor.generate(prompts, SamplingParams(max_new_tokens=10))]
    return forced, greedy


def test_a_half_precision_expert_answers_as_the_trained_one(tmp_path):
    real = load_model(None, cache_dir=MODEL_CACHE, device="cpu")
    editor = LemoeEditor(real.model, real.tokenizer, LemoeConfig())
    records = zsre_records(0, 16)
    edits = [Edit(i + 1, r["src"], r["alt"], subject=r["subject"]) for i, r in enumerate(records)]
    trained = editor.train(edits, name="e0").entry
    editor.set_stack([trained])
    forced, greedy = _answers(editor, records)
    learned = sum(
        preds == editor.tokenizer(" " + r["alt"], add_special_tokens=False)["input_ids"] for (preds, _), r in zip(forced, records)
    )
    assert learned >= 12  # the expert did learn its edits (teacher-forced, exact)

    sha = save_expert(trained, tmp_path / "e0")
    assert load_file(str(tmp_path / "e0" / WEIGHTS_FILE))["up.weight"].dtype == torch.float16
    editor.set_stack([load_expert(tmp_path / "e0", expected_sha256=sha)])
    forced_half, greedy_half = _answers(editor, records)

    assert forced_half == forced  # every teacher-forced prediction and route, on prompts and rephrases
    assert greedy_half == greedy
