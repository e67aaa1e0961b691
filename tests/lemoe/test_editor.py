from __future__ import annotations

import dataclasses

import pytest
import torch

from app.lemoe.config import LemoeConfig
from app.lemoe.editor import Edit, LemoeEditor, SamplingParams
from app.lemoe.expert import Expert, ExpertEntry
from app.lemoe.layer import LemoeMLP, decoder_layers
from app.lemoe.routing import RouteDecision, RouteState, routing
from app.lemoe.text import chat_prompt, encode_pair
from app.lemoe.trainer import hidden_at_layer, upper_model

FAST = LemoeConfig(layer=2, max_steps=150, lr=3e-2, augmentations=0, gate_threshold=0.9, loss_threshold=0.05)
FACTS = [Edit(1, "The capital of France is", "Rome"), Edit(2, "Who wrote the novel?", "Tolstoy")]


@pytest.fixture()
def editor(tiny_model, tiny_tokenizer):
    return LemoeEditor(tiny_model, tiny_tokenizer, FAST)


def logits(editor: LemoeEditor, text: str, **state) -> torch.Tensor:
    enc = editor.tokenizer(text, return_tensors="pt")
    with torch.no_grad(), routing(RouteState(query_mask=enc["attention_mask"], router=editor.router, **state)):
        return editor.model(**enc).logits


def test_inject_wraps_the_configured_layer_only(editor):
    layers = decoder_layers(editor.model)
    assert isinstance(layers[2].mlp, LemoeMLP)
    assert not any(isinstance(layer.mlp, LemoeMLP) for i, layer in enumerate(layers) if i != 2)


def test_layer_out_of_range_raises(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="out of range"):
        LemoeEditor(tiny_model, tiny_tokenizer, dataclasses.replace(FAST, layer=99))


def test_fresh_expert_is_a_no_op_until_trained(editor):
    before = logits(editor, "The capital of France is")
    fresh = ExpertEntry("fresh", Expert(64, 16), anchors=torch.zeros(1, 64))
    after = logits(editor, "The capital of France is", stack=(fresh,), forced=[RouteDecision(0, "fresh", None, None)])
    assert torch.equal(before, after)


def test_upper_model_on_cached_inputs_matches_full_forward(editor):
    enc = editor.tokenizer(["The capital of France is Paris"], return_tensors="pt")
    full = editor.model(**enc).logits
    cached = hidden_at_layer(editor.model, 2, enc["input_ids"], enc["attention_mask"])
    upper = upper_model(editor.model, 2)(inputs_embeds=cached, attention_mask=enc["attention_mask"]).logits
    assert torch.allclose(full, upper, atol=1e-5)
    assert len(decoder_layers(editor.model)) == 4  # the view did not mutate the model


def test_training_teaches_edits_and_reports_progress(editor):
    seen: list[tuple[int, float]] = []
    trained = editor.train(FACTS, name="e1", progress=lambda s, loss: seen.append((s, loss)))
    assert seen and seen[0][0] == 1 and seen[-1][1] < seen[0][1]
    assert trained.final_loss < FAST.loss_threshold and trained.steps < FAST.max_steps  # stopped early
    editor.add_expert(trained.entry)
    texts = [g.text.strip() for g in editor.generate([e.prompt for e in FACTS], SamplingParams(max_new_tokens=8))]
    assert texts[0].startswith("Rome") and texts[1].startswith("Tolstoy")


def test_earlier_experts_stay_bit_identical_after_later_rounds(editor):
    first = editor.train(FACTS[:1], name="e1")
    editor.add_expert(first.entry)
    snapshot = {k: v.clone() for k, v in first.entry.module.state_dict().items()}
    anchors = first.entry.anchors.clone()
    editor.add_expert(editor.train(FACTS[1:], name="e2").entry)
    for k, v in first.entry.module.state_dict().items():
        assert torch.equal(v, snapshot[k]), k
    assert torch.equal(first.entry.anchors, anchors)
    assert not any(p.requires_grad for p in first.entry.module.parameters())


def test_unrelated_prompt_is_bit_identical_to_the_base_model(editor):
    prompt = "The quick brown fox jumps over"
    base_logits = logits(editor, prompt, stack=())
    base_text = editor.generate([prompt], SamplingParams(max_new_tokens=8), stack=())[0].text
    editor.add_expert(editor.train(FACTS, name="e1").entry)
    [gen] = editor.generate([prompt], SamplingParams(max_new_tokens=8))
    assert gen.route.expert_name is None and gen.route.score < FAST.gate_threshold
    assert gen.text == base_text
    assert torch.equal(logits(editor, prompt, stack=editor.stack), base_logits)


def test_route_is_computed_from_the_prompt_only(editor):
    editor.add_expert(editor.train(FACTS, name="e1").entry)
    [(_, _, forced_route)] = editor.teacher_forced([FACTS[0].prompt], ["Rome and more words after it"])
    [gen] = editor.generate([FACTS[0].prompt], SamplingParams(max_new_tokens=2))
    assert forced_route.expert_name == gen.route.expert_name == "e1"
    assert forced_route.nearest_edit_id == gen.route.nearest_edit_id == 1
    assert forced_route.score == pytest.approx(gen.route.score, abs=1e-4)


def test_newest_expert_wins_for_the_same_fact(editor):
    old = editor.train([Edit(1, "The capital of France is", "Rome")], name="old")
    new = editor.train([Edit(2, "The capital of France is", "Berlin")], name="new")
    editor.add_expert(old.entry)
    editor.add_expert(new.entry)
    [gen] = editor.generate(["The capital of France is"], SamplingParams(max_new_tokens=4))
    assert gen.route.expert_name == "new" and gen.text.strip().startswith("Berlin")


def test_a_newer_edit_of_the_same_fact_supersedes_the_older_one(editor):
    old = editor.train([Edit(1, "The capital of France is", "Rome", subject="France")], name="old")
    assert editor.superseded([Edit(1, "The capital of France is", "Rome")], old.entry) == []  # empty stack
    editor.add_expert(old.entry)
    again = [Edit(2, "The capital of France is", "Berlin", subject="France"), Edit(3, "Who wrote the novel?", "Tolstoy")]
    new = editor.train(again, name="new")
    assert editor.superseded(again, new.entry) == [(2, 1)]  # the unrelated edit supersedes nothing


def test_removing_an_expert_restores_base_answers(editor):
    prompt = FACTS[0].prompt
    base = editor.generate([prompt], SamplingParams(max_new_tokens=6), stack=())[0].text
    editor.add_expert(editor.train(FACTS, name="e1").entry)
    assert editor.generate([prompt], SamplingParams(max_new_tokens=6))[0].text != base
    editor.remove_expert("e1")
    assert editor.generate([prompt], SamplingParams(max_new_tokens=6))[0].text == base


@pytest.mark.parametrize(
    ("prompt", "target", "message"),
    [
        ("", "Rome", "prompt must not be empty"),
        ("   ", "Rome", "prompt must not be empty"),
        ("The capital is", " \n", "target must not be empty"),
        (None, "Rome", "prompt must be a string"),
        ("The capital is", 42, "target must be a string"),
        ("word " * 400, "Rome", "context"),
    ],
)
def test_bad_edits_raise_clear_value_errors(editor, prompt, target, message):
    with pytest.raises(ValueError, match=message):
        editor.train([Edit(1, prompt, target)], name="bad")


def test_training_on_no_edits_raises(editor):
    with pytest.raises(ValueError, match="no edits"):
        editor.train([], name="none")


def test_validation_leaves_room_for_the_training_prefix(tiny_model, tiny_tokenizer):
    editor = LemoeEditor(tiny_model, tiny_tokenizer, dataclasses.replace(FAST, augmentations=1))
    target = "Rome"
    room = editor.max_positions - len(encode_pair(tiny_tokenizer, "x", target, eos=True).target_ids)
    words = tiny_tokenizer.decode(tiny_tokenizer("ab " * 400)["input_ids"][: room - 1])
    assert len(tiny_tokenizer(words)["input_ids"]) <= room  # fits without the prefix ...
    with pytest.raises(ValueError, match="context"):
        editor.validate_edit(words, target)  # ... but not behind one


@pytest.mark.parametrize("chat_examples", [True, False])
def test_edits_are_trained_in_chat_form_too_unless_turned_off(tiny_model, tiny_tokenizer, chat_examples):
    """A chat is routed on its user message; the expert must also have learned to answer it as the
    assistant's reply (the tiny tokenizer has a chat template, as the bundled model does)."""
    editor = LemoeEditor(tiny_model, tiny_tokenizer, dataclasses.replace(FAST, chat_examples=chat_examples))
    trained = editor.train(FACTS, name="e1")
    editor.add_expert(trained.entry)
    chats = [chat_prompt(editor.tokenizer, [("user", f.prompt)]) for f in FACTS]
    answers = editor.generate_routed_on(chats, [f.prompt for f in FACTS], SamplingParams(max_new_tokens=8))

    assert trained.meta["examples"] == len(FACTS) * (2 if chat_examples else 1)
    assert [a.route.expert_name for a in answers] == ["e1", "e1"]
    if chat_examples:
        assert all(a.text.strip().startswith(f.target) for a, f in zip(answers, FACTS, strict=True))


def test_batch_validation_agrees_with_one_edit_at_a_time(tiny_model, tiny_tokenizer):
    editor = LemoeEditor(tiny_model, tiny_tokenizer, dataclasses.replace(FAST, augmentations=1))
    room = editor.max_positions - len(encode_pair(tiny_tokenizer, "x", "Rome", eos=True).target_ids)
    edge = tiny_tokenizer.decode(tiny_tokenizer("ab " * 400)["input_ids"][: room - 1])
    pairs = [("The capital of France is", "Rome"), (edge, "Rome"), ("ab " * 400, "x"), ("  ", "Rome"), ("Paris is in", " France")]
    problems = editor.validate_edits(pairs)
    for (prompt, target), problem in zip(pairs, problems, strict=True):
        try:
            editor.validate_edit(prompt, target)
            expected = None
        except ValueError as exc:
            expected = str(exc)
        assert problem == expected
    assert problems[0] is None and problems[4] is None and "context" in problems[1] and "empty" in problems[3]


def test_experts_serve_in_the_models_dtype(tiny_model, tiny_tokenizer):
    editor = LemoeEditor(tiny_model.to(torch.bfloat16), tiny_tokenizer, dataclasses.replace(FAST, gate_threshold=-1.0))
    prompt = "The capital of France is"
    module = Expert(editor.hidden_size, 4)
    torch.nn.init.normal_(module.up.weight)  # float32, as trained
    editor.add_expert(ExpertEntry("e", module, anchors=editor.queries([prompt]), edit_ids=[1]))
    assert editor.stack[0].module.down.weight.dtype == editor.stack[0].module.up.weight.dtype == torch.bfloat16
    [g] = editor.generate([prompt], SamplingParams(max_new_tokens=3))
    assert g.route.expert_name == "e" and g.completion_tokens >= 1
