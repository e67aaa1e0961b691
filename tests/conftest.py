"""Shared fixtures: a tiny random Llama (built once per session) for fast unit tests."""

from __future__ import annotations

import pytest
import torch

from tests.tiny import build_tiny_model, build_tiny_tokenizer

# Far steadier timings on a shared 2-core machine.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture()
def tiny_model(tiny_tokenizer):
    model = build_tiny_model(len(tiny_tokenizer))
    model.generation_config.eos_token_id = tiny_tokenizer.eos_token_id
    model.generation_config.pad_token_id = tiny_tokenizer.pad_token_id
    return model
