"""The editor's generate stops early on a generic signal (an event or a deadline) and says why."""

from __future__ import annotations

import threading
import time

import pytest

from app.lemoe.editor import LemoeEditor, SamplingParams
from app.lemoe.stopping import StopReason, StopSignal
from tests.lemoe.test_editor import FAST

PROMPT = "Who wrote the novel?"  # the tiny model does not emit its end token on it
LONG = SamplingParams(max_new_tokens=40)


@pytest.fixture()
def editor(tiny_model, tiny_tokenizer):
    return LemoeEditor(tiny_model, tiny_tokenizer, FAST)


def test_without_a_signal_it_runs_to_max_new_tokens(editor):
    [g] = editor.generate([PROMPT], LONG, stop=StopSignal())

    assert g.completion_tokens == 40 and g.stop_reason is StopReason.LENGTH


def test_an_event_set_mid_generation_stops_it_at_the_next_token(editor, tiny_model):
    cancel, forwards = threading.Event(), []

    def count(module, args):
        forwards.append(1)
        if len(forwards) == 4:  # prefill + 3 tokens, then the caller goes away
            cancel.set()

    hook = tiny_model.register_forward_pre_hook(count)
    try:
        [g] = editor.generate([PROMPT], LONG, stop=StopSignal(event=cancel))
    finally:
        hook.remove()

    assert g.stop_reason is StopReason.CANCELLED
    assert 1 <= g.completion_tokens < LONG.max_new_tokens
    assert len(forwards) < LONG.max_new_tokens
    assert g.text == editor.generate([PROMPT], SamplingParams(max_new_tokens=g.completion_tokens))[0].text


def test_a_passed_deadline_stops_it_and_says_so(editor):
    [g] = editor.generate([PROMPT], LONG, stop=StopSignal(deadline=time.monotonic() - 1))

    assert g.stop_reason is StopReason.DEADLINE
    assert g.completion_tokens < LONG.max_new_tokens


def test_a_complete_answer_is_not_reported_as_cut_short(editor):
    [g] = editor.generate([PROMPT], SamplingParams(max_new_tokens=1), stop=StopSignal(deadline=time.monotonic() - 1))

    assert g.completion_tokens == 1 and g.stop_reason is StopReason.LENGTH


def test_the_signal_applies_to_the_whole_batch(editor):
    cancel = threading.Event()
    cancel.set()

    gens = editor.generate([PROMPT, "Tell me a story"], LONG, stop=StopSignal.within(60, cancel))

    assert [g.stop_reason for g in gens] == [StopReason.CANCELLED] * 2
    assert all(g.completion_tokens < LONG.max_new_tokens for g in gens)
