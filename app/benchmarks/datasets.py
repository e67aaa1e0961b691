"""Readers for editing benchmarks in the ZsRE and CounterFact formats (EasyEdit/WISE files)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

DataFormat = Literal["zsre", "counterfact"]
_ANSWER = {"zsre": "answers", "counterfact": "ground_truth"}

# Our field -> the field in each format.
_FIELDS: dict[str, dict[str, str]] = {
    "zsre": {"prompt": "src", "target": "alt", "rephrase": "rephrase", "loc_prompt": "loc", "loc_answer": "loc_ans"},
    "counterfact": {
        "prompt": "prompt",
        "target": "target_new",
        "rephrase": "rephrase_prompt",
        "loc_prompt": "locality_prompt",
        "loc_answer": "locality_ground_truth",
    },
}


@dataclass(frozen=True)
class BenchRecord:
    prompt: str
    target: str
    rephrase: str
    loc_prompt: str
    loc_answer: str
    subject: str | None = None
    answer: str | None = None  # the true (unedited) answer, where the file has one


def _text(value: object) -> str:
    # Some files hold a list of answers/paraphrases where one is expected: take the first.
    if isinstance(value, list):
        value = value[0] if value else ""
    return str(value).strip()


def load_records(path: Path, fmt: DataFormat, limit: int | None = None) -> list[BenchRecord]:
    """Read `path` (a JSON list) as `fmt`; raises ValueError naming the record and field at fault."""
    if fmt not in _FIELDS:
        raise ValueError(f"unknown format {fmt!r}; one of {sorted(_FIELDS)}")
    data = json.loads(Path(path).read_text())
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records")
    fields = _FIELDS[fmt]
    records = []
    for i, raw in enumerate(data):
        if limit is not None and len(records) == limit:
            break
        missing = [src for src in fields.values() if src not in raw]
        if missing:
            raise ValueError(f"{path} record {i}: missing {missing} for format {fmt!r}")
        values = {ours: _text(raw[src]) for ours, src in fields.items()}
        empty = [k for k, v in values.items() if not v]
        if empty:
            # A record with nothing to teach or score cannot be an edit; the next one takes its place.
            log.warning("%s record %d: empty %s, skipped", path, i, empty)
            continue
        answer = _text(raw.get(_ANSWER[fmt], "")) or None
        records.append(BenchRecord(**values, subject=raw.get("subject"), answer=answer))
    return records
