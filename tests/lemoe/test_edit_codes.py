"""Edit codes: each expert learns one code per edit, and a routed request gets the code of the
edit whose anchor routed it, where the answer is read (LemoeConfig.edit_codes)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from app.lemoe.config import LemoeConfig
from app.lemoe.editor import Edit, LemoeEditor, SamplingParams
from app.lemoe.expert import Expert, ExpertEntry
from app.lemoe.io import load_expert, save_expert
from app.lemoe.routing import RouteDecision, RouteState, answer_positions, answer_slots, routing
from app.lemoe.text import encode_pair
from app.lemoe.trainer import _answer_slots, _Chunk, _packed_rows, _padded_rows

FAST = LemoeConfig(layer=2, max_steps=150, lr=3e-2, augmentations=0, gate_threshold=0.9, loss_threshold=0.05, chat_examples=False)
FACTS = [Edit(1, "The capital of France is", "Rome"), Edit(2, "Who wrote the novel?", "Tolstoy")]


def _chunk(rows) -> _Chunk:
    _, mask, labels, positions = rows
    where = labels != -100
    return _Chunk(torch.zeros(1), torch.zeros(1), mask, where, labels[where], positions)


def test_each_labelled_position_gets_its_examples_slot_in_padded_and_packed_rows(tiny_tokenizer):
    prompts = ["The capital of France is", "The capital of Spain is", "The capital of Italy is"]
    pairs = [encode_pair(tiny_tokenizer, p, t) for p, t in zip(prompts, ["Rome", "Paris and Lyon", "Oslo"], strict=True)]
    padded = _chunk(_padded_rows(pairs, 0))
    slots = _answer_slots(padded, [4, 0, 7])
    for row, slot in enumerate([4, 0, 7]):
        assert set(slots[row][padded.where[row]].tolist()) == {slot}
        assert set(slots[row][~padded.where[row]].tolist()) == {-1}
    packed = _chunk(_packed_rows(pairs, 4, torch.float32))
    slots = _answer_slots(packed, [4, 0, 7])[0]
    labelled = slots[packed.where[0]].tolist()
    counts = [len(p.target_ids) for p in pairs]
    assert labelled == [4] * counts[0] + [0] * counts[1] + [7] * counts[2]
    assert set(slots[~packed.where[0]].tolist()) == {-1}


def test_a_code_is_added_before_the_activation_and_slot_minus_one_adds_none():
    expert = Expert(8, 4, generator=torch.Generator().manual_seed(0), codes=2)
    with torch.no_grad():
        expert.up.weight.normal_()
        expert.codes.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 5.0]]))
    x = torch.randn(2, 3, 8)
    plain = expert(x)
    assert torch.equal(expert(x, torch.tensor([-1, -1])), plain)
    coded = expert(x, torch.tensor([1, -1]))
    expected = expert.up(torch.nn.functional.silu(expert.down(x[0]) + expert.codes[1]))
    assert torch.allclose(coded[0], expected) and torch.equal(coded[1], plain[1])


def test_at_prefill_only_positions_from_the_prompts_last_token_on_get_the_code():
    query_mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1]])  # right- and left-padded prompts
    slots = answer_slots(torch.tensor([3, 5]), answer_positions(query_mask, torch.tensor([0, 1]), 5))
    assert slots.tolist() == [[-1, -1, 3, 3, 3], [-1, -1, -1, -1, 5]]
    # A later step (one new token per row) reads the answer everywhere.
    assert answer_slots(torch.tensor([3, 5]), answer_positions(query_mask, torch.tensor([0, 1]), 1)).tolist() == [3, 5]


@pytest.fixture()
def editor(tiny_model, tiny_tokenizer):
    return LemoeEditor(tiny_model, tiny_tokenizer, FAST)


def test_the_answer_follows_the_code_of_the_edit_that_routed_the_request(editor):
    trained = editor.train(FACTS, name="e1")
    assert trained.entry.module.codes is not None and trained.entry.module.codes.shape[0] == len(FACTS)
    editor.add_expert(trained.entry)
    texts = [g.text.strip() for g in editor.generate([e.prompt for e in FACTS], SamplingParams(max_new_tokens=10))]
    assert texts[0].startswith("Rome") and texts[1].startswith("Tolstoy")
    # The first edit's prompt held on the expert with its own code, then with the second edit's:
    # the code of the edit that routed the request is read, and only where the answer is.
    enc = editor.tokenizer([FACTS[0].prompt], return_tensors="pt")
    own, swapped = (RouteDecision(0, "e1", None, edit.edit_id) for edit in FACTS)
    with_own, with_other = (
        logits_under(editor, enc, RouteState(query_mask=enc["attention_mask"], stack=editor.stack, forced=[d])) for d in (own, swapped)
    )
    assert torch.equal(with_own[:, :-1], with_other[:, :-1])  # the prompt before its last token: no code
    assert not torch.allclose(with_own[:, -1], with_other[:, -1])


def logits_under(editor: LemoeEditor, enc, state: RouteState) -> torch.Tensor:
    with torch.no_grad(), routing(state):
        return editor.model(**enc).logits


def test_without_edit_codes_the_expert_has_none_and_answers_as_before(tiny_model, tiny_tokenizer):
    editor = LemoeEditor(tiny_model, tiny_tokenizer, dataclasses.replace(FAST, edit_codes=False))
    trained = editor.train(FACTS, name="e1")
    assert trained.entry.module.codes is None and trained.entry.slot_of(FACTS[0].edit_id) == -1
    editor.add_expert(trained.entry)
    texts = [g.text.strip() for g in editor.generate([e.prompt for e in FACTS], SamplingParams(max_new_tokens=10))]
    assert texts[0].startswith("Rome") and texts[1].startswith("Tolstoy")


def test_codes_are_saved_and_loaded_with_the_expert(editor, tmp_path):
    entry = editor.train(FACTS, name="e1").entry
    save_expert(entry, tmp_path / "e1")
    loaded = load_expert(tmp_path / "e1")
    assert loaded.module.codes is not None
    assert torch.allclose(loaded.module.codes, entry.module.codes, rtol=1e-3, atol=1e-2)  # stored in half precision
    assert [loaded.slot_of(e.edit_id) for e in FACTS] == [0, 1]
    assert loaded.slot_of(99) == -1


def test_an_expert_saved_without_codes_loads_and_serves_without_them(tmp_path):
    entry = ExpertEntry("old", Expert(8, 4), anchors=torch.zeros(2, 8), edit_ids=[1, 2])
    save_expert(entry, tmp_path / "old")
    loaded = load_expert(tmp_path / "old")
    assert loaded.module.codes is None and loaded.slot_of(1) == -1
