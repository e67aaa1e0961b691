"""The OpenAI chat route on the real bundled SmolLM2-135M-Instruct: its own chat template, and
streamed text equal to the non-streamed text (greedy), through the official client."""

from __future__ import annotations

import openai
import pytest

from app.engine.engine import Engine
from app.main import create_app
from tests.api.live import DEADLINE_S, live_server
from tests.test_e2e_real_model import real_settings

pytestmark = pytest.mark.real_model

QUESTION = "What is the capital of France?"


def test_chat_on_the_real_model_uses_its_template_and_streams_the_same_text(tmp_path):
    settings = real_settings(tmp_path / "data").model_copy(update={"worker_enabled": False})
    engine = Engine.from_settings(settings)
    messages = [{"role": "user", "content": QUESTION}]
    with live_server(create_app(settings, engine=engine)) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", timeout=DEADLINE_S, max_retries=0)
        once = client.chat.completions.create(model="m", messages=messages, max_tokens=16, temperature=0)
        streamed = "".join(
            chunk.choices[0].delta.content or ""
            for chunk in client.chat.completions.create(model="m", messages=messages, max_tokens=16, temperature=0, stream=True)
            if chunk.choices
        )

    templated = engine.chat_prompt([("user", QUESTION)])
    assert "<|im_start|>user" in templated and templated.endswith("<|im_start|>assistant\n")
    assert once.usage.prompt_tokens == len(engine.loaded.tokenizer(templated)["input_ids"])
    assert "Paris" in once.choices[0].message.content  # the Instruct model answers in chat form
    assert streamed == once.choices[0].message.content
    assert once.model == engine.model_name and once.model_extra["lemoe"]["expert"] is None
