"""Continuous batching: rows that join and leave a running batch get what each would get alone
(route, text, token count, stop reason, streamed pieces), and the scheduler that runs the batch
decodes concurrent callers together and refuses past its queue."""

from __future__ import annotations

import threading
import time

import pytest

from app.engine.scheduler import QueueFull, Scheduler
from app.lemoe.batching import DecodeBatch, RowRequest
from app.lemoe.editor import LemoeEditor, SamplingParams
from app.lemoe.stopping import StopReason, StopSignal
from tests.lemoe.test_editor import FACTS, FAST

WAIT_S = 120.0  # generous: a busy machine is slow, never this slow

OTHER = ["The quick brown fox jumps over", "Once upon a time there", "A B C", "Who wrote the novel?"]


@pytest.fixture()
def editor(tiny_model, tiny_tokenizer):
    editor = LemoeEditor(tiny_model, tiny_tokenizer, FAST)
    editor.add_expert(editor.train(FACTS, name="facts").entry)
    return editor


def requests(editor: LemoeEditor) -> list[RowRequest]:
    """Edited and unedited prompts, greedy and seeded sampling, a stop string, various lengths."""
    stack = editor.stack
    # A stop string the text does reach: two characters from the middle of its free run.
    free = alone(editor, RowRequest(OTHER[2], SamplingParams(max_new_tokens=14), stack)).text
    stop = free[len(free) // 2 : len(free) // 2 + 2]
    return [
        RowRequest(FACTS[0].prompt, SamplingParams(max_new_tokens=6), stack),
        RowRequest(OTHER[0], SamplingParams(max_new_tokens=11), stack),
        RowRequest(FACTS[1].prompt, SamplingParams(max_new_tokens=3), stack),
        RowRequest(OTHER[1], SamplingParams(max_new_tokens=9, do_sample=True, temperature=0.9, seed=7), stack),
        RowRequest(OTHER[2], SamplingParams(max_new_tokens=14, stop=(stop,)), stack),
        RowRequest(OTHER[3], SamplingParams(max_new_tokens=8), ()),  # edits off: the base model
    ]


def alone(editor: LemoeEditor, request: RowRequest):
    [g] = editor.generate([request.prompt], request.params, stack=request.stack)
    return g


def test_rows_joining_and_leaving_a_running_batch_get_what_they_would_get_alone(editor):
    reqs = requests(editor)
    expected = [alone(editor, r) for r in reqs]
    batch, got = DecodeBatch(editor), {}
    for key, request in enumerate(reqs):  # one joins per step, while earlier ones decode and leave
        got.update(batch.add([(key, request)]))
        got.update(batch.step())
    while len(batch):
        got.update(batch.step())

    assert sorted(got) == list(range(len(reqs)))
    for key, want in enumerate(expected):
        g = got[key]
        assert (g.text, g.completion_tokens, g.stop_reason) == (want.text, want.completion_tokens, want.stop_reason), key
        assert (g.route.expert_name, g.route.nearest_edit_id) == (want.route.expert_name, want.route.nearest_edit_id)
    assert got[0].route.expert_name == "facts" and got[0].text.strip().startswith("Rome")
    assert got[1].route.expert_name is None and got[5].route.expert_name is None
    assert got[4].stop_reason is StopReason.STOP and reqs[4].params.stop[0] not in got[4].text


def test_arrivals_prefilled_together_get_what_each_would_get_alone(editor):
    """All requests arrive at once: those on one stack and routed on their prompt share one
    left-padded prefill, the others their own; then they decode together."""
    reqs = requests(editor)
    chat = f"<user>{FACTS[1].prompt}</user><assistant>"
    reqs.append(RowRequest(chat, SamplingParams(max_new_tokens=5), editor.stack, route_on=FACTS[1].prompt))
    expected = [alone(editor, r) for r in reqs[:-1]]
    expected += editor.generate_routed_on([chat], [FACTS[1].prompt], reqs[-1].params)
    batch = DecodeBatch(editor)
    got = dict(batch.add(list(enumerate(reqs))))
    while len(batch):
        got.update(batch.step())

    for key, want in enumerate(expected):
        g = got[key]
        assert (g.text, g.completion_tokens, g.stop_reason, g.route.expert_name) == (
            want.text,
            want.completion_tokens,
            want.stop_reason,
            want.route.expert_name,
        ), key
    assert got[0].route.expert_name == got[len(reqs) - 1].route.expert_name == "facts"


def test_a_row_routed_on_another_text_and_streamed_pieces_add_up_to_its_text(editor):
    pieces: list[str] = []
    chat = f"<user>{FACTS[0].prompt}</user><assistant>"
    request = RowRequest(chat, SamplingParams(max_new_tokens=8), editor.stack, route_on=FACTS[0].prompt, on_text=pieces.append)
    [want] = editor.generate_routed_on([chat], [FACTS[0].prompt], request.params)
    batch = DecodeBatch(editor)
    assert batch.add([("other", RowRequest(OTHER[0], SamplingParams(max_new_tokens=20), editor.stack))]) == []
    assert batch.add([("chat", request)]) == []
    got = {}
    while len(batch):
        got.update(batch.step())

    assert got["chat"].text == want.text and got["chat"].route.expert_name == want.route.expert_name == "facts"
    assert "".join(pieces) == got["chat"].text and len(pieces) > 1


def test_a_signal_ends_its_row_only(editor):
    cancel = threading.Event()
    batch = DecodeBatch(editor)
    batch.add([("cut", RowRequest(OTHER[3], SamplingParams(max_new_tokens=30), (), stop=StopSignal(event=cancel)))])
    batch.add([("goes on", RowRequest(OTHER[0], SamplingParams(max_new_tokens=30), ()))])
    first = batch.step()
    cancel.set()
    second = batch.step()

    assert first == [] and [key for key, _ in second] == ["cut"]
    assert second[0][1].stop_reason is StopReason.CANCELLED and second[0][1].completion_tokens == 3
    assert len(batch) == 1
    [(late, ended)] = batch.add([("late", RowRequest(OTHER[1], SamplingParams(), (), stop=StopSignal(event=cancel)))])
    assert late == "late" and ended.stop_reason is StopReason.CANCELLED and ended.completion_tokens == 0


def test_the_scheduler_decodes_concurrent_callers_together(editor):
    reqs = requests(editor) * 2
    expected = [alone(editor, r) for r in reqs]
    scheduler = Scheduler(editor, max_batch=4, max_waiting=64)
    widest, results = [], {}

    def call(i: int) -> None:
        results[i] = scheduler.run(reqs[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(reqs))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + WAIT_S
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        widest.append(scheduler.running)
        time.sleep(0.001)
    for t in threads:
        t.join(WAIT_S)
    scheduler.close()

    assert sorted(results) == list(range(len(reqs)))
    assert [(g.text, g.stop_reason) for g in (results[i] for i in range(len(reqs)))] == [(g.text, g.stop_reason) for g in expected]
    assert max(widest) <= 4


def test_past_its_queue_the_scheduler_refuses_at_once(editor):
    hold = threading.Event()
    scheduler = Scheduler(editor, max_batch=1, max_waiting=0)
    long = RowRequest(OTHER[3], SamplingParams(max_new_tokens=10_000), (), stop=StopSignal(event=hold))
    first = threading.Thread(target=scheduler.run, args=(long,))
    first.start()
    deadline = time.monotonic() + WAIT_S
    while scheduler.running < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        assert scheduler.running == 1
        with pytest.raises(QueueFull, match="already waiting"):
            scheduler.run(RowRequest(OTHER[0], SamplingParams(max_new_tokens=2), ()))
    finally:
        hold.set()
        first.join(WAIT_S)
    assert scheduler.run(RowRequest(OTHER[0], SamplingParams(max_new_tokens=2), ())).completion_tokens == 2  # room again
    scheduler.close()
