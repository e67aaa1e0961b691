"""The OpenAI-compatible routes, through the official `openai` client against a live server:
models, completions, chat completions, streaming, the lemoe extension field, OpenAI's errors."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
import openai
import pytest

from app.config import Settings
from app.main import create_app
from app.worker import TrainingWorker
from tests.api.live import DEADLINE_S, LiveServer, live_server, wait_for
from tests.api.support import FRANCE, UNRELATED
from tests.api.test_health import _sample

SYSTEM = "You are a helpful assistant. The capital of France is a question you answer briefly."


def _client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", timeout=DEADLINE_S, max_retries=0)


def _train(server: LiveServer, *edits: dict) -> str:
    """Submit `edits`, train them into one expert in this process; its name."""
    runtime = server.app.state.runtime
    for edit in edits:
        assert httpx.post(f"{server.url}/v1/edits", json=edit, timeout=DEADLINE_S).status_code == 202
    worker = TrainingWorker(runtime.settings, runtime.session_factory, runtime.engine, stack=runtime.stack, metrics=runtime.metrics)
    assert worker.run_once() is not None
    [expert] = httpx.get(f"{server.url}/v1/experts", timeout=DEADLINE_S).json()["items"]
    return expert["name"]


@pytest.fixture
def server(db_settings: Settings, shared_engine) -> Iterator[LiveServer]:
    with live_server(create_app(db_settings, engine=shared_engine)) as live:
        yield live


@pytest.fixture
def trained(server: LiveServer) -> tuple[LiveServer, str]:
    return server, _train(server, FRANCE)


def test_models_lists_the_served_model(server):
    [model] = _client(server).models.list().data

    assert model.id == server.app.state.runtime.engine.model_name
    assert model.object == "model"


def test_a_completion_is_the_generation_and_names_its_expert(trained):
    server, expert = trained
    client = _client(server)
    plain = httpx.post(f"{server.url}/v1/generate", json={"prompt": FRANCE["prompt"], "max_new_tokens": 6}, timeout=DEADLINE_S).json()

    answer = client.completions.create(model="any", prompt=FRANCE["prompt"], max_tokens=6, temperature=0)
    base = client.completions.create(
        model="any", prompt=FRANCE["prompt"], max_tokens=6, temperature=0, extra_body={"lemoe": {"edits": False}}
    )

    assert plain["expert"]["name"] == expert
    [choice] = answer.choices
    assert choice.text == plain["text"] and choice.finish_reason in ("stop", "length")
    assert answer.object == "text_completion" and answer.model == plain["model"]
    assert answer.usage.completion_tokens == plain["completion_tokens"]
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens > 0
    routing = answer.model_extra["lemoe"]
    assert routing["expert"]["name"] == expert and routing["edits"] is True
    assert routing["nearest_edit_id"] == plain["nearest_edit_id"] and routing["route_text"] == "prompt"
    assert base.model_extra["lemoe"]["expert"] is None and base.model_extra["lemoe"]["edits"] is False
    assert base.choices[0].text != choice.text  # the edit changed the answer; without it, it is gone


def test_chat_routes_on_the_last_user_message_not_the_template_or_system_prompt(trained):
    server, expert = trained
    client = _client(server)

    edited = client.chat.completions.create(
        model="any",
        temperature=0,
        max_tokens=6,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": FRANCE["prompt"]}],
    )
    unrelated = client.chat.completions.create(
        model="any",
        temperature=0,
        max_tokens=6,
        messages=[{"role": "system", "content": FRANCE["prompt"]}, {"role": "user", "content": UNRELATED}],
    )

    assert edited.object == "chat.completion"
    assert edited.choices[0].message.role == "assistant"
    assert isinstance(edited.choices[0].message.content, str)
    assert edited.model_extra["lemoe"]["expert"]["name"] == expert
    assert edited.model_extra["lemoe"]["route_text"] == "last_user_message"
    assert unrelated.model_extra["lemoe"]["expert"] is None  # the system prompt names France: no route
    # The template around the message counts in the prompt's tokens.
    assert edited.usage.prompt_tokens > server.app.state.runtime.engine.validate_prompt(FRANCE["prompt"], 0)


def _streamed(stream) -> tuple[str, list]:
    chunks = list(stream)
    text = ""
    for chunk in chunks:
        for choice in chunk.choices:
            piece = choice.text if chunk.object == "text_completion" else choice.delta.content
            text += piece or ""
    return text, chunks


@pytest.mark.parametrize("edits", [True, False], ids=["edits", "no-edits"])
def test_streamed_text_equals_the_non_streamed_text(trained, edits):
    server, expert = trained
    client = _client(server)
    messages = [{"role": "user", "content": FRANCE["prompt"]}]
    extra = {"lemoe": {"edits": edits}}

    once = client.chat.completions.create(model="any", messages=messages, max_tokens=24, temperature=0, extra_body=extra)
    text, chunks = _streamed(
        client.chat.completions.create(
            model="any",
            messages=messages,
            max_tokens=24,
            temperature=0,
            stream=True,
            extra_body=extra,
            stream_options={"include_usage": True},
        )
    )
    completion = client.completions.create(model="any", prompt=FRANCE["prompt"], max_tokens=24, temperature=0, extra_body=extra)
    streamed, pieces = _streamed(
        client.completions.create(
            model="any",
            prompt=FRANCE["prompt"],
            max_tokens=24,
            temperature=0,
            stream=True,
            extra_body=extra,
        )
    )

    assert text == once.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    [last] = [c for c in chunks if c.choices and c.choices[0].finish_reason is not None]
    assert last.choices[0].finish_reason == once.choices[0].finish_reason
    assert last.model_extra["lemoe"] == once.model_extra["lemoe"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == once.usage.completion_tokens
    assert streamed == completion.choices[0].text
    assert pieces[-1].model_extra["lemoe"] == completion.model_extra["lemoe"]
    assert (once.model_extra["lemoe"]["expert"] is not None) is edits


def test_sse_framing_ends_with_done(server):
    body = {"model": "m", "prompt": "The capital of", "max_tokens": 4, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=DEADLINE_S) as response:
        lines = [line for line in response.iter_lines() if line.strip()]

    assert response.headers["content-type"].startswith("text/event-stream")
    assert all(line.startswith("data: ") for line in lines), lines
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[0][6:])["object"] == "text_completion"


def test_stop_strings_cut_the_text_and_seeds_repeat_a_sample(server):
    client = _client(server)
    full = client.completions.create(model="m", prompt=UNRELATED, max_tokens=16, temperature=0).choices[0].text
    stop = full[3:5]
    assert stop.strip(), f"pick another prompt: {full!r}"

    cut = client.completions.create(model="m", prompt=UNRELATED, max_tokens=16, temperature=0, stop=[stop])
    streamed, _ = _streamed(client.completions.create(model="m", prompt=UNRELATED, max_tokens=16, temperature=0, stop=stop, stream=True))
    samples = [
        client.completions.create(model="m", prompt=UNRELATED, max_tokens=16, temperature=1.5, seed=7).choices[0].text for _ in range(2)
    ]
    other = {
        client.completions.create(model="m", prompt=UNRELATED, max_tokens=16, temperature=1.5, seed=s).choices[0].text for s in range(8, 12)
    }

    assert cut.choices[0].text == full[: full.index(stop)] and cut.choices[0].finish_reason == "stop"
    assert streamed == cut.choices[0].text
    assert samples[0] == samples[1]
    assert len(other | {samples[0]}) > 1  # the seed matters


@pytest.mark.parametrize(
    ("body", "param", "needle"),
    [
        ({"n": 2}, "n", "less than or equal to 1"),
        ({"max_tokens": 10_000}, "max_tokens", "max_tokens must be from 1 to"),
        ({"temperature": 3}, "temperature", "temperature"),
        ({"logprobs": 2}, "logprobs", "Extra inputs are not permitted"),
        ({"lemoe": {"edits": "no"}}, "lemoe.edits", "lemoe.edits"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "stop"),
    ],
)
def test_bad_values_are_400s_in_openais_error_shape(server, body, param, needle):
    client = _client(server)

    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(
            model="m",
            prompt="The capital of",
            **{k: v for k, v in body.items() if k != "lemoe"},
            extra_body={"lemoe": body["lemoe"]} if "lemoe" in body else None,
        )

    error = raised.value.body
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert needle in error["message"]


def test_chat_errors_and_invalid_json_have_openais_shape(server):
    url = f"{server.url}/v1/chat/completions"
    bad_json = httpx.post(url, content=b"{nope", headers={"content-type": "application/json"}, timeout=DEADLINE_S)
    no_messages = httpx.post(url, json={"model": "m", "messages": []}, timeout=DEADLINE_S)
    nul = httpx.post(url, json={"model": "m", "messages": [{"role": "user", "content": "a\u0000b"}]}, timeout=DEADLINE_S)
    unknown = httpx.post(f"{server.url}/v1/generate", json={"prompt": "x", "n": 2}, timeout=DEADLINE_S)

    assert bad_json.status_code == 400 and bad_json.json()["error"]["code"] == "invalid_json"
    assert no_messages.status_code == 400 and no_messages.json()["error"]["param"] == "messages"
    assert nul.status_code == 400 and nul.json()["error"]["param"] == "messages[0].content"
    assert set(nul.json()["error"]) == {"message", "type", "param", "code"}
    # The other routes keep this server's own shape.
    assert unknown.status_code == 422 and set(unknown.json()["error"]) == {"type", "message"}


def test_a_client_that_hangs_up_stops_its_stream(server, shared_engine):
    forwards = threading.Event()
    calls: list[int] = []

    def slow_forward(module, args):  # ~0.05 s a token: 200 tokens would take 10 s or more
        calls.append(1)
        forwards.set()
        threading.Event().wait(0.05)

    body = {"model": "m", "prompt": UNRELATED, "max_tokens": 200, "temperature": 0, "stream": True}
    hook = shared_engine.loaded.model.register_forward_pre_hook(slow_forward)
    try:
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=DEADLINE_S) as response:
            assert response.status_code == 200
            assert forwards.wait(DEADLINE_S), "the generation did not start"
        # The connection is closed: the generation must stop at its next token.

        def stopped() -> str | None:
            text = httpx.get(f"{server.url}/metrics", timeout=DEADLINE_S).text
            return text if _sample(text, "lemoe_generations_stopped_total", reason="cancelled") == 1 else None

        text = wait_for(stopped, "the cancelled stream in /metrics")
    finally:
        hook.remove()

    assert len(calls) < 200
    assert _sample(text, "lemoe_generated_tokens_total") == 0
