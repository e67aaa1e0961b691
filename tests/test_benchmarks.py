"""The benchmark runners end to end on the tiny model and a three-record ZsRE-format file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.benchmarks.gate import GateOptions, run_gate
from app.benchmarks.quality import QualityOptions, format_table, run_quality
from app.lemoe.config import LemoeConfig
from tests.api.support import tiny_model_dir  # noqa: F401  (fixture)

RECORDS = [
    {"src": "The capital of France is", "alt": "Rome", "rephrase": "The capital of France is",
     "loc": "The quick brown fox jumps over", "loc_ans": "the lazy dog", "subject": "France"},
    {"src": "Who wrote the novel?", "alt": "Tolstoy", "rephrase": "Who wrote the novel?",
     "loc": "What is the name of the river?", "loc_ans": "Seine", "subject": "novel"},
    {"src": "The capital of Germany is", "alt": "Paris", "rephrase": "The capital of Germany is",
     "loc": "When was it founded?", "loc_ans": "1900", "subject": "Germany"},
]


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    path = tmp_path / "zsre.json"
    path.write_text(json.dumps(RECORDS))
    return path


def test_quality_run_reports_every_metric_and_the_subject_keys(tiny_model_dir, data, tmp_path):  # noqa: F811
    config = LemoeConfig(layer=2, max_steps=150, lr=3e-2, augmentations=0, loss_threshold=0.05)
    opts = QualityOptions(data=data, format="zsre", edits=3, batch_size=2, model_path=tiny_model_dir,
                          cache_dir=tmp_path / "cache", device="cpu", config=config)
    result = run_quality(opts)
    assert (result["edits"], result["experts"], result["subject_keyed_edits"]) == (3, 2, 3)
    # Paraphrase == prompt here, so every edit and "paraphrase" must reach its own expert.
    assert result["rel_routed_right"] == 1.0 and result["gen_routed_right"] == 1.0
    assert result["rel"] == 1.0 and result["gen"] == 1.0
    assert 0.0 <= result["loc"] <= 1.0 and result["s_per_edit"] > 0
    assert "edits with a subject key" in format_table(result)


def test_quality_without_subject_keys_counts_none(tiny_model_dir, data, tmp_path):  # noqa: F811
    config = LemoeConfig(layer=2, max_steps=2, subject_keys=False)
    opts = QualityOptions(data=data, format="zsre", edits=2, model_path=tiny_model_dir,
                          cache_dir=tmp_path / "cache", device="cpu", config=config)
    assert run_quality(opts)["subject_keyed_edits"] == 0


def test_gate_calibration_finds_each_identical_paraphrase_its_own_anchor(tiny_model_dir, data, tmp_path):  # noqa: F811
    opts = GateOptions(data=data, format="zsre", edits=3, layers=(1,), poolings=("mean", "subject"),
                       model_path=tiny_model_dir, cache_dir=tmp_path / "cache", device="cpu")
    rows = run_gate(opts)
    assert [(r["route_layer"], r["pooling"]) for r in rows] == [(1, "subject"), (1, "subject+sentence>=0.4"), (1, "mean")]
    for row in rows:
        assert row["nearest_is_own"] == 1.0
        assert row["para@0.8"] == 1.0  # cosine 1 with its own anchor clears every threshold
        assert all(0.0 <= row[f"loc@{t}"] <= 1.0 for t in (0.4, 0.8))


def test_gate_calibration_compares_the_sentence_floors_asked_for(tiny_model_dir, data, tmp_path):  # noqa: F811
    opts = GateOptions(data=data, format="zsre", edits=3, layers=(1,), poolings=("subject",), subject_floors=(0.3, 2.0),
                       model_path=tiny_model_dir, cache_dir=tmp_path / "cache", device="cpu")
    rows = run_gate(opts)
    assert [r["pooling"] for r in rows] == ["subject", "subject+sentence>=0.3", "subject+sentence>=2.0"]
    assert rows[1]["para@0.4"] == 1.0
    assert rows[2]["para@0.4"] == 0.0 and rows[2]["loc@0.4"] == 0.0  # no cosine reaches 2: nothing may fire
