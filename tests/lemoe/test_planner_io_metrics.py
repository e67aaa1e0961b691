from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from app.benchmarks.datasets import load_records
from app.lemoe.expert import Expert, ExpertEntry
from app.lemoe.io import ExpertFileError, load_expert, save_expert
from app.lemoe.metrics import token_accuracy, unchanged_share
from app.lemoe.planner import plan_batches


def test_planner_groups_similar_edits_and_covers_each_once():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 10
    points = np.concatenate([c + rng.normal(size=(4, 16)) for c in centres])  # 3 tight clusters of 4
    order = rng.permutation(12)
    batches = plan_batches(points[order], batch_size=4)
    assert sorted(i for b in batches for i in b) == list(range(12))
    for batch in batches:
        assert len({int(order[i]) // 4 for i in batch}) == 1  # one cluster per expert


def test_planner_without_planning_keeps_arrival_order():
    batches = plan_batches(np.zeros((10, 4)), batch_size=4, planning=False)
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_planner_never_exceeds_batch_size():
    points = np.random.default_rng(1).normal(size=(50, 8))
    batches = plan_batches(points, batch_size=7)
    assert max(len(b) for b in batches) <= 7
    assert sorted(i for b in batches for i in b) == list(range(50))


def test_planner_rejects_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        plan_batches(np.zeros((3, 2)), batch_size=0)


def _entry() -> ExpertEntry:
    torch.manual_seed(0)
    module = Expert(8, 4)
    torch.nn.init.normal_(module.up.weight)
    return ExpertEntry("e7", module, anchors=torch.randn(2, 8), edit_ids=[3, 4], meta={"steps": 5})


def test_expert_round_trips_through_safetensors(tmp_path):
    entry = _entry()
    sha = save_expert(entry, tmp_path / "e7")
    assert sorted(p.name for p in (tmp_path / "e7").iterdir()) == ["config.json", "weights.safetensors"]
    loaded = load_expert(tmp_path / "e7", expected_sha256=sha)
    # The weights are stored in half precision (exactly what the float16 rounding of each weight
    # gives), served as float32; the keys exactly as they were.
    stored = load_file(str(tmp_path / "e7" / "weights.safetensors"))
    assert stored["down.weight"].dtype == stored["up.weight"].dtype == torch.float16 and stored["anchors"].dtype == torch.float32
    assert sha == hashlib.sha256((tmp_path / "e7" / "weights.safetensors").read_bytes()).hexdigest()
    for name in ("down", "up"):
        weight = getattr(loaded.module, name).weight
        assert weight.dtype == torch.float32 and not weight.requires_grad
        assert torch.equal(weight, getattr(entry.module, name).weight.detach().half().float())
    x = torch.randn(3, 8)
    assert torch.allclose(loaded.module(x), entry.module(x), atol=1e-2, rtol=1e-2)
    assert torch.equal(loaded.anchors, entry.anchors)
    assert loaded.edit_ids == [3, 4] and loaded.meta == {"steps": 5}


def test_float32_expert_files_load_exactly_and_any_file_loads_in_the_dtype_asked(tmp_path):
    entry = _entry()
    sha = save_expert(entry, tmp_path / "old", weights_dtype=torch.float32)  # as files were written before
    assert load_file(str(tmp_path / "old" / "weights.safetensors"))["down.weight"].dtype == torch.float32
    loaded = load_expert(tmp_path / "old", expected_sha256=sha)
    x = torch.randn(3, 8)
    assert torch.equal(loaded.module(x), entry.module(x))
    save_expert(entry, tmp_path / "half")
    for directory in ("old", "half"):
        served = load_expert(tmp_path / directory, dtype=torch.bfloat16)
        assert served.module.down.weight.dtype == served.module.up.weight.dtype == torch.bfloat16
        assert served.anchors.dtype == torch.float32  # keys are compared in float32 whatever the model's dtype
        assert torch.allclose(served.module(x.bfloat16()).float(), entry.module(x), atol=5e-2, rtol=5e-2)


def test_corrupt_or_missing_expert_files_are_loud(tmp_path):
    sha = save_expert(_entry(), tmp_path / "e7")
    weights = tmp_path / "e7" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ExpertFileError, match="corrupt"):
        load_expert(tmp_path / "e7", expected_sha256=sha)
    with pytest.raises(ExpertFileError, match="missing"):
        load_expert(tmp_path / "nowhere")


def test_metric_definitions():
    assert token_accuracy([1, 2, 3, 9], [1, 2, 3, 4]) == 0.75
    assert unchanged_share([5, 6], [5, 7]) == 0.5
    with pytest.raises(ValueError):
        token_accuracy([], [])


def test_dataset_readers_accept_both_formats_and_name_bad_records(tmp_path):
    zsre = tmp_path / "z.json"
    zsre.write_text(json.dumps([{"src": "Q?", "alt": "A", "rephrase": "Q2?", "loc": "L?", "loc_ans": "B", "subject": "s"}]))
    [rec] = load_records(zsre, "zsre")
    assert (rec.prompt, rec.target, rec.rephrase, rec.loc_prompt, rec.loc_answer) == ("Q?", "A", "Q2?", "L?", "B")
    cf = tmp_path / "c.json"
    record = {"prompt": "P", "target_new": "T", "rephrase_prompt": ["R"], "locality_prompt": "L", "locality_ground_truth": ["G"]}
    cf.write_text(json.dumps([record]))
    [rec] = load_records(cf, "counterfact")
    assert (rec.rephrase, rec.loc_answer) == ("R", "G")
    with pytest.raises(ValueError, match="record 0: missing"):
        load_records(zsre, "counterfact")


def test_checksum_of_missing_weights_is_an_expert_file_error(tmp_path):
    from app.lemoe.io import weights_sha256

    with pytest.raises(ExpertFileError, match="missing"):
        weights_sha256(tmp_path)


def test_dataset_reader_skips_records_with_nothing_to_teach(tmp_path):
    rows = [{"src": f"Q{i}?", "alt": "" if i == 1 else "A", "rephrase": "R", "loc": "L", "loc_ans": "B"} for i in range(4)]
    path = tmp_path / "z.json"
    path.write_text(json.dumps(rows))
    assert [r.prompt for r in load_records(path, "zsre", limit=3)] == ["Q0?", "Q2?", "Q3?"]


def test_exact_match_scores_each_prompt_in_its_own_order(tiny_model, tiny_tokenizer):
    from app.lemoe.config import LemoeConfig
    from app.lemoe.editor import LemoeEditor, SamplingParams
    from app.lemoe.metrics import exact_match

    editor = LemoeEditor(tiny_model, tiny_tokenizer, LemoeConfig(layer=2))
    prompts = ["The capital of France is", "Who wrote the novel?", "The quick brown fox", "Answer the question"]
    greedy = [g.text for g in editor.generate(prompts, SamplingParams(max_new_tokens=1), stack=())]
    # One-token targets the model produces, and long ones it cannot: sorting by length must not
    # mix up whose score is whose.
    targets = [greedy[0], "zzzz zzzz zzzz", greedy[2], "qqq qqq"]
    one_by_one = exact_match(editor, prompts, targets, batch_size=1, stack=())
    batched = exact_match(editor, prompts, targets, batch_size=3, stack=())
    assert batched == one_by_one
    assert batched[1] == batched[3] == 0.0
    assert 1.0 in batched  # so a mix-up of whose score is whose would show


def test_exact_match_needs_the_whole_word():
    from app.lemoe.metrics import _whole

    assert _whole("Paris, France", "Paris") and _whole("Paris", "Paris")
    assert not _whole("Parisian", "Paris")


def test_expert_file_errors_carry_the_reason_and_no_absolute_path(tmp_path):
    sha = save_expert(_entry(), tmp_path / "e7")
    (tmp_path / "e7" / "weights.safetensors").write_bytes(b"not safetensors")

    with pytest.raises(ExpertFileError) as corrupt:
        load_expert(tmp_path / "e7", expected_sha256=sha)
    with pytest.raises(ExpertFileError) as unreadable:
        load_expert(tmp_path / "e7")  # no checksum to compare: the file itself is unreadable

    assert corrupt.value.directory == tmp_path / "e7" and corrupt.value.name is None
    assert corrupt.value.reason.startswith("weights.safetensors is corrupt: sha256")
    assert unreadable.value.reason.startswith("cannot load its files: SafetensorError")
    named = unreadable.value.naming("expert-7")
    assert named.name == "expert-7" and str(named).startswith("expert 'expert-7': ")
    for error in (corrupt.value, unreadable.value, named):
        assert str(tmp_path) not in str(error) and str(tmp_path) not in error.reason


def test_an_expert_whose_config_names_another_expert_is_refused(tmp_path):
    from app.engine.engine import ExpertSpec, check_expert_files

    sha = save_expert(_entry(), tmp_path / "e7")  # its config.json says "e7"

    assert check_expert_files(ExpertSpec("e7", tmp_path / "e7", sha)).name == "e7"
    with pytest.raises(ExpertFileError, match="config.json names expert 'e7', not 'e8'") as wrong:
        check_expert_files(ExpertSpec("e8", tmp_path / "e7", sha))
    assert wrong.value.name == "e8"


def test_an_expert_made_for_another_serving_config_is_refused_naming_both_values(tmp_path):
    from app.engine.experts import ExpertSpec, check_expert_files
    from app.lemoe.config import ServingConfig

    entry = _entry()
    entry.meta = {"layer": 3, "route_layer": 3, "pooling": "mean"}
    sha = save_expert(entry, tmp_path / "e7")
    width = entry.module.down.in_features
    spec = ExpertSpec("e7", tmp_path / "e7", sha)
    same = ServingConfig(layer=3, route_layer=3, subject_layer=1, pooling="mean", hidden_size=width)

    assert check_expert_files(spec, serving=same).name == "e7"
    with pytest.raises(ExpertFileError) as moved:
        check_expert_files(spec, serving=replace(same, layer=2, route_layer=2))
    assert moved.value.name == "e7" and moved.value.directory == tmp_path / "e7"
    assert moved.value.reason.startswith("trained for adaptor layer (LEMOE_ADAPTOR_LAYER) 3, this server runs 2; route layer 3")
    with pytest.raises(ExpertFileError, match=f"hidden size {width}, this server runs {width * 2}"):
        check_expert_files(spec, serving=replace(same, hidden_size=width * 2))


def test_an_expert_saved_before_serving_configs_were_recorded_loads_as_before():
    from app.lemoe.config import ServingConfig

    serving = ServingConfig(layer=2, route_layer=2, subject_layer=None, pooling="last", hidden_size=8)
    assert serving.mismatch({}) is None  # nothing recorded: nothing checked
    assert serving.mismatch({"subject_layer": 5}) is None  # subject keys off here: not read
    assert serving.mismatch({"pooling": "mean"}) == "trained for query pooling 'mean', this server runs 'last'; " + (
        "restore the setting or train its edits again"
    )
