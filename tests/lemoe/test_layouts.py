"""The editor's core behaviours on tiny random models of every supported layout, and the clear
refusal of any other architecture."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from app.engine.model_loader import load_model
from app.lemoe import trainer
from app.lemoe.config import LemoeConfig
from app.lemoe.editor import Edit, LemoeEditor, SamplingParams
from app.lemoe.expert import Expert
from app.lemoe.io import load_expert, save_expert
from app.lemoe.layer import LemoeMLP, decoder_layers
from app.lemoe.layout import LAYOUTS, UnsupportedModel, layout_of
from app.lemoe.routing import RouteState, routing
from app.lemoe.text import chat_prompt, encode_pair
from app.lemoe.trainer import hidden_at_layer, lower_model, upper_model
from tests.tiny import ARCHITECTURES, build_tiny_arch_model, build_unsupported_model, save_model_dir

FAST = LemoeConfig(layer=2, max_steps=150, lr=3e-2, augmentations=0, gate_threshold=0.9, loss_threshold=0.05)
FACTS = [Edit(1, "The capital of France is", "Rome"), Edit(2, "Who wrote the novel?", "Tolstoy")]
UNRELATED = "The quick brown fox jumps over"
PROMPTS = ["The capital of France is Paris, the capital of Germany is", "Who wrote"]


@pytest.fixture(params=ARCHITECTURES)
def arch_model(request, tiny_tokenizer):
    return build_tiny_arch_model(request.param, tiny_tokenizer)


def _has_hooks(model: torch.nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_every_architecture_tested_has_a_layout_and_the_model_type_it_claims():
    assert set(ARCHITECTURES) == set(LAYOUTS)


def test_upper_view_over_lower_view_equals_the_full_model(arch_model, tiny_tokenizer):
    layout = layout_of(arch_model)
    decoder = layout.decoder_of(arch_model)
    before = {name: id(m) for name, m in arch_model.named_modules()}
    enc = tiny_tokenizer(PROMPTS, return_tensors="pt", padding=True, padding_side="right")
    with torch.no_grad():
        full = arch_model(**enc).logits
        for start in range(1, len(decoder_layers(arch_model))):
            cached = hidden_at_layer(arch_model, start, enc["input_ids"], enc["attention_mask"])
            upper = upper_model(arch_model, start)(inputs_embeds=cached, attention_mask=enc["attention_mask"]).logits
            assert torch.equal(upper, full), (arch_model.config.model_type, start)
    lower = lower_model(arch_model, 2)
    assert len(layout.layers_of(arch_model)) == 4 and len(getattr(lower, layout.layers)) == 2
    assert {name: id(m) for name, m in arch_model.named_modules()} == before  # the views replaced nothing
    assert not isinstance(getattr(decoder, layout.final_norm), torch.nn.Identity)
    assert not _has_hooks(arch_model)


def _chunk_losses(editor: LemoeEditor, pairs, *, packed: bool) -> tuple[list[tuple], float, torch.Tensor]:
    """(each chunk's shape, the loss, the expert's gradient) of one training step over `pairs`."""
    model, layer = editor.model, editor.layer
    chunks = [
        trainer._Chunk.build([pairs[i] for i in c], 0, model, layer, torch.device("cpu"), packing=packed)
        for c in trainer._chunked(pairs, packing=packed)
    ]
    expert = Expert(model.config.hidden_size, 8, "ffn", generator=torch.Generator().manual_seed(0))
    for parameter in expert.parameters():  # a fresh expert adds zero: make it add something
        torch.nn.init.normal_(parameter, std=0.5, generator=torch.Generator().manual_seed(1))
    upper = layout_of(model).decoder_of(upper_model(model, layer + 1))
    total = 0.0
    with routing(RouteState()):
        for c in chunks:
            hidden = upper(
                inputs_embeds=c.cached + expert(c.expert_input), attention_mask=c.mask, position_ids=c.positions
            ).last_hidden_state
            loss = torch.nn.functional.cross_entropy(model.get_output_embeddings()(hidden[c.where]), c.targets, reduction="sum")
            loss.backward()
            total += float(loss.detach())
    return [tuple(c.cached.shape) for c in chunks], total, torch.cat([p.grad.flatten() for p in expert.parameters()])


def test_examples_sharing_a_prefix_train_packed_in_one_row_with_the_padded_batchs_loss(arch_model, tiny_tokenizer):
    # Chat forms share the template's system prompt and header: one packed row computes it once.
    chats = [encode_pair(tiny_tokenizer, chat_prompt(tiny_tokenizer, [("user", e.prompt)]), e.target, eos=True) for e in FACTS]
    plain = [encode_pair(tiny_tokenizer, e.prompt, e.target, eos=True) for e in FACTS]
    pairs = plain + chats + [encode_pair(tiny_tokenizer, chat_prompt(tiny_tokenizer, [("user", UNRELATED)]), "the dog")]
    editor = LemoeEditor(arch_model, tiny_tokenizer, FAST)
    shapes, loss, grad = _chunk_losses(editor, pairs, packed=True)
    shared = trainer._shared_prefix(pairs[2:])
    assert shared >= 8
    width = arch_model.config.hidden_size
    lengths = [len(p.prompt_ids) + len(p.target_ids) for p in pairs]
    if trainer.sliding_window(arch_model) is None:
        packed_tokens = shared + sum(n - shared for n in lengths[2:])
        assert shapes == [(1, packed_tokens, width), (2, max(lengths[:2]), width)]
    else:  # the packed mask has no window (qwen2's tiny one is 4 tokens): padded
        assert arch_model.config.model_type == "qwen2"
        assert shapes == [(3, max(lengths[2:]), width), (2, max(lengths[:2]), width)]
    padded_shapes, padded_loss, padded_grad = _chunk_losses(editor, pairs, packed=False)
    assert len(padded_shapes) == 1 and padded_shapes[0][0] == 5
    assert loss == pytest.approx(padded_loss, rel=1e-5)
    # The same up to float rounding (the packed row sums in another order).
    torch.testing.assert_close(grad, padded_grad, rtol=1e-3, atol=1e-4)


def test_inject_wraps_the_layouts_mlp_of_the_configured_layer(arch_model, tiny_tokenizer):
    editor = LemoeEditor(arch_model, tiny_tokenizer, FAST)
    layout = layout_of(arch_model)
    wrapped = [isinstance(layout.mlp_of(block), LemoeMLP) for block in layout.layers_of(arch_model)]
    assert wrapped == [False, False, True, False] and editor.layer == 2


@pytest.mark.parametrize("precision", ["full", "bfloat16"])
def test_two_edits_answer_their_targets_and_an_unrelated_prompt_stays_bit_identical(arch_model, tiny_tokenizer, precision):
    editor = LemoeEditor(arch_model, tiny_tokenizer, replace(FAST, train_precision=precision))
    params = SamplingParams(max_new_tokens=8)
    base = editor.generate([UNRELATED], params, stack=())[0].text
    base_logits = _logits(editor, UNRELATED, ())
    trained = editor.train(FACTS, name="e1")
    editor.add_expert(trained.entry)

    edited = editor.generate([e.prompt for e in FACTS], params)
    assert all(g.text.strip().startswith(e.target) for g, e in zip(edited, FACTS, strict=True)), [g.text for g in edited]
    assert {g.route.expert_name for g in edited} == {"e1"}
    [unrelated] = editor.generate([UNRELATED], params)
    assert unrelated.route.expert_name is None and unrelated.text == base
    assert torch.equal(_logits(editor, UNRELATED, editor.stack), base_logits)


def test_a_saved_expert_loads_back_and_answers_the_same(arch_model, tiny_tokenizer, tmp_path):
    editor = LemoeEditor(arch_model, tiny_tokenizer, FAST)
    trained = editor.train(FACTS, name="e1").entry
    sha = save_expert(trained, tmp_path / "e1")
    loaded = load_expert(tmp_path / "e1", expected_sha256=sha)
    for name, tensor in trained.module.state_dict().items():
        # Weights are stored in float16: exactly the trained ones rounded to it.
        assert torch.equal(loaded.module.state_dict()[name], tensor.half().to(tensor.dtype)), name
    prompts = [e.prompt for e in FACTS]
    editor.add_expert(trained)
    before = editor.generate(prompts, SamplingParams(max_new_tokens=6))
    editor.remove_expert("e1")
    editor.add_expert(loaded)
    after = editor.generate(prompts, SamplingParams(max_new_tokens=6))
    assert [(g.text, g.route.expert_name) for g in after] == [(g.text, g.route.expert_name) for g in before]


def test_an_unsupported_model_type_is_refused_naming_the_supported_ones(tiny_tokenizer, tmp_path):
    model = build_unsupported_model(tiny_tokenizer)
    expected = "model type 'opt' is not supported; supported model types: " + ", ".join(sorted(LAYOUTS))
    with pytest.raises(UnsupportedModel, match=expected):
        layout_of(model)
    with pytest.raises(UnsupportedModel, match=expected):
        LemoeEditor(model, tiny_tokenizer, FAST)
    with pytest.raises(UnsupportedModel, match=expected):
        load_model(save_model_dir(tmp_path / "opt", model, tiny_tokenizer), cache_dir=tmp_path / "cache", device="cpu")
    assert issubclass(UnsupportedModel, ValueError)


def _logits(editor: LemoeEditor, text: str, stack) -> torch.Tensor:
    enc = editor.tokenizer(text, return_tensors="pt")
    with torch.no_grad(), routing(RouteState(query_mask=enc["attention_mask"], router=editor.router, stack=stack)):
        return editor.model(**enc).logits
