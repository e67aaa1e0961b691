"""Training and serving share one model: nothing a training pass does is visible to a request."""

from __future__ import annotations

import threading

import torch

from app.lemoe.editor import LemoeEditor, SamplingParams
from app.lemoe.trainer import hidden_at_layer
from tests.lemoe.test_editor import FACTS, FAST

WAIT_S = 120.0  # generous: only a hang would reach it


def test_hidden_capture_leaves_no_hook_on_the_shared_model(tiny_model, tiny_tokenizer):
    LemoeEditor(tiny_model, tiny_tokenizer, FAST)
    hooks = {name: (dict(m._forward_pre_hooks), dict(m._forward_hooks)) for name, m in tiny_model.named_modules()}
    enc = tiny_tokenizer(["The capital of France is"], return_tensors="pt")
    seen: list[dict] = []

    def look(module, args, output):  # on the embedding: inside the capture's own pass
        seen.append({name: (dict(m._forward_pre_hooks), dict(m._forward_hooks)) for name, m in tiny_model.named_modules()})

    handle = tiny_model.get_input_embeddings().register_forward_hook(look)
    try:
        hidden_at_layer(tiny_model, 2, enc["input_ids"], enc["attention_mask"])
    finally:
        handle.remove()
    assert len(seen) == 1
    seen[0]["model.embed_tokens"][1].pop(handle.id)
    assert seen[0] == hooks


def test_a_generation_in_the_middle_of_a_hidden_state_capture_is_untouched(tiny_model, tiny_tokenizer):
    """The capture pauses inside its forward pass until a whole generation has run on another
    thread: the generation succeeds and equals the one made with nothing else running."""
    editor = LemoeEditor(tiny_model, tiny_tokenizer, FAST)
    params = SamplingParams(max_new_tokens=8)
    [alone] = editor.generate(["Who wrote the novel?"], params)
    capturing = threading.Event()
    generated = threading.Event()
    outcome: dict = {}
    trainer_thread = threading.current_thread()

    def pause_the_capture(module, args, output):
        if threading.current_thread() is trainer_thread and not capturing.is_set():
            capturing.set()
            assert generated.wait(WAIT_S), "the concurrent generation never finished"

    def serve() -> None:
        assert capturing.wait(WAIT_S)
        try:
            [outcome["generation"]] = editor.generate(["Who wrote the novel?"], params)
        except Exception as exc:  # reported below: the test asserts there was none
            outcome["error"] = exc
        finally:
            generated.set()

    server = threading.Thread(target=serve)
    server.start()
    handle = tiny_model.get_input_embeddings().register_forward_hook(pause_the_capture)
    enc = tiny_tokenizer(["The capital of France is"], return_tensors="pt")
    try:
        captured = hidden_at_layer(tiny_model, editor.layer, enc["input_ids"], enc["attention_mask"])
    finally:
        handle.remove()
        server.join(WAIT_S)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["generation"].text == alone.text
    assert captured.shape == (1, enc["input_ids"].shape[1], tiny_model.config.hidden_size)


def test_requests_while_an_expert_trains_get_the_base_output(tiny_model, tiny_tokenizer):
    """Generation on other threads throughout a whole training call: every one succeeds and
    equals the unedited model's output (the new expert is not live until added)."""
    editor = LemoeEditor(tiny_model, tiny_tokenizer, FAST)
    params = SamplingParams(max_new_tokens=6)
    prompts = [f.prompt for f in FACTS] + ["The quick brown fox jumps over"]
    alone = [g.text for g in editor.generate(prompts, params)]
    done = threading.Event()
    served: list[list[str]] = []
    errors: list[Exception] = []
    enough = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                served.append([g.text for g in editor.generate(prompts, params)])
            except Exception as exc:  # reported below
                errors.append(exc)
            if len(served) >= 3:
                enough.set()

    def progress(step: int, loss: float) -> None:
        if step == 1:  # mid-training, hold on until requests have been served meanwhile
            assert enough.wait(WAIT_S), "no request was served during training"

    server = threading.Thread(target=serve)
    server.start()
    try:
        trained = editor.train(FACTS, name="concurrent", progress=progress)
    finally:
        done.set()
        server.join(WAIT_S)
    assert errors == []
    assert len(served) >= 3 and all(texts == alone for texts in served)
    editor.add_expert(trained.entry)
    assert [g.text for g in editor.generate([FACTS[0].prompt], params)][0].strip().startswith("Rome")
    assert torch.equal(trained.entry.anchors, editor.queries([f.prompt for f in FACTS]))
