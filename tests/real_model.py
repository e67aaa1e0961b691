"""Helpers for behavioural tests on the real bundled SmolLM2-135M-Instruct."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MODEL_CACHE = REPO / "lemoe-data" / "model-cache"  # converted once, reused by later runs


def _records(relative: str, start: int, count: int) -> list[dict]:
    path = SHARED_DATA / relative
    if not path.is_file():
        raise FileNotFoundError(f"the real-model tests read {path} (../shared/data beside the checkout)")
    return json.loads(path.read_text())[start : start + count]


def zsre_records(start: int, count: int) -> list[dict]:
    return _records("zsre/zsre_eval_dev.json", start, count)


def counterfact_records(start: int, count: int) -> list[dict]:
    """CounterFact: each locality prompt is a near neighbour (same relation, another subject)."""
    return _records("counterfact/counterfact-val.json", start, count)
