"""Experts that add only where the answer is read (LemoeConfig.expert_positions = "answer"): the
cheaper training path computes what the full rows do, and serving adds nothing before the
prompt's last token."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from app.lemoe import trainer
from app.lemoe.config import LemoeConfig
from app.lemoe.editor import Edit, LemoeEditor
from app.lemoe.expert import Expert, ExpertEntry
from app.lemoe.io import load_expert, save_expert
from app.lemoe.layout import layout_of
from app.lemoe.routing import RouteDecision, RouteState, routing
from app.lemoe.text import chat_prompt, encode_pair
from tests.tiny import ARCHITECTURES, build_tiny_arch_model

FAST = LemoeConfig(layer=2, max_steps=150, lr=3e-2, augmentations=0, gate_threshold=0.9, loss_threshold=0.05, chat_examples=False)
FACTS = [Edit(1, "The capital of France is", "Rome"), Edit(2, "Who wrote the novel?", "Tolstoy")]


def _step(editor: LemoeEditor, chunks, expert: Expert, *, rows: bool) -> tuple[float, torch.Tensor]:
    """(loss, the expert's gradient) of one step over `chunks`, on the full rows with the expert
    masked to the labelled positions or on the answer rows."""
    model, layer = editor.model, editor.layer
    upper = layout_of(model).decoder_of(trainer.upper_model(model, layer + 1))
    expert.zero_grad()
    total = 0.0
    with routing(RouteState()):
        steps = [c.answer_rows(upper, layer + 1) for c in chunks] if rows else chunks
        for c in steps:
            hidden = c.labelled_hidden(expert, upper)
            loss = torch.nn.functional.cross_entropy(model.get_output_embeddings()(hidden), c.targets, reduction="sum")
            loss.backward()
            total += float(loss.detach())
    return total, torch.cat([p.grad.flatten() for p in expert.parameters()])


@pytest.mark.parametrize("arch", [a for a in ARCHITECTURES if a != "qwen2"])  # qwen2's tiny model has a sliding window
def test_answer_rows_give_the_full_rows_loss_and_gradient(arch, tiny_tokenizer):
    model = build_tiny_arch_model(arch, tiny_tokenizer)
    editor = LemoeEditor(model, tiny_tokenizer, FAST)
    chats = [encode_pair(tiny_tokenizer, chat_prompt(tiny_tokenizer, [("user", e.prompt)]), e.target, eos=True) for e in FACTS]
    plain = [encode_pair(tiny_tokenizer, e.prompt, e.target, eos=True) for e in FACTS]
    pairs = plain + chats + [encode_pair(tiny_tokenizer, "The quick brown fox jumps over", "the lazy dog")]
    groups = trainer._chunked(pairs)
    chunks = [trainer._Chunk.build([pairs[i] for i in g], 0, model, editor.layer, torch.device("cpu")) for g in groups]
    assert any(c.positions is not None for c in chunks) and any(c.positions is None for c in chunks)  # packed and padded
    for chunk, group in zip(chunks, groups, strict=True):
        chunk.slots = trainer._answer_slots(chunk, list(range(len(group))))
        chunk.answer_only = True
    expert = Expert(model.config.hidden_size, 8, generator=torch.Generator().manual_seed(0), codes=len(pairs))
    for parameter in expert.parameters():  # a fresh expert adds zero: make it add something
        torch.nn.init.normal_(parameter, std=0.5, generator=torch.Generator().manual_seed(1))
    full_loss, full_grad = _step(editor, chunks, expert, rows=False)
    rows_loss, rows_grad = _step(editor, chunks, expert, rows=True)
    assert rows_loss == pytest.approx(full_loss, rel=1e-5)
    torch.testing.assert_close(rows_grad, full_grad, rtol=1e-3, atol=1e-4)
    assert full_grad.abs().max() > 0.1


def _logits(editor: LemoeEditor, prompt: str, entry: ExpertEntry | None) -> torch.Tensor:
    enc = editor.tokenizer([prompt], return_tensors="pt")
    stack = () if entry is None else (entry,)
    forced = [RouteDecision(None if entry is None else 0, None if entry is None else entry.name, None, FACTS[0].edit_id)]
    with torch.no_grad(), routing(RouteState(query_mask=enc["attention_mask"], stack=stack, forced=forced)):
        return editor.model(**enc).logits[0]


@pytest.mark.parametrize("positions", ["answer", "all"])
def test_an_answer_only_expert_changes_nothing_before_the_prompts_last_token(tiny_model, tiny_tokenizer, positions, tmp_path):
    editor = LemoeEditor(tiny_model, tiny_tokenizer, dataclasses.replace(FAST, expert_positions=positions))
    entry = editor.train(FACTS, name="e1").entry
    assert entry.meta["expert_positions"] == positions
    save_expert(entry, tmp_path / "e1")
    loaded = load_expert(tmp_path / "e1")
    assert loaded.answer_only == (positions == "answer")
    base, edited = _logits(editor, FACTS[0].prompt, None), _logits(editor, FACTS[0].prompt, loaded)
    assert not torch.allclose(edited[-1], base[-1])  # the answer is edited
    if positions == "answer":
        assert torch.equal(edited[:-1], base[:-1])
    else:
        assert not torch.allclose(edited[:-1], base[:-1])


def test_an_expert_saved_before_the_setting_adds_at_every_position(tiny_model, tiny_tokenizer):
    editor = LemoeEditor(tiny_model, tiny_tokenizer, FAST)
    entry = editor.train(FACTS, name="e1").entry
    old = dataclasses.replace(entry, meta={k: v for k, v in entry.meta.items() if k != "expert_positions"})
    assert entry.answer_only and not old.answer_only
    base, edited = _logits(editor, FACTS[0].prompt, None), _logits(editor, FACTS[0].prompt, old)
    assert not torch.allclose(edited[:-1], base[:-1])
