"""Lifelong editing quality: train T edits as a planned sequence of experts, then score all T."""

from __future__ import annotations

import json
import logging
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from app.benchmarks.datasets import BenchRecord, DataFormat, load_records
from app.engine.model_loader import load_model
from app.lemoe import metrics
from app.lemoe.config import LemoeConfig
from app.lemoe.editor import Edit, LemoeEditor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QualityOptions:
    data: Path
    format: DataFormat
    edits: int
    batch_size: int = 16
    planning: bool = True
    gate: bool = True
    base_only: bool = False
    model_path: Path | None = None
    cache_dir: Path = Path("lemoe-data/model-cache")
    device: str = "auto"
    config: LemoeConfig = LemoeConfig()


def _mean(xs: list[float]) -> float:
    return round(statistics.fmean(xs), 4) if xs else float("nan")


def _quantiles(xs: list[float]) -> dict[str, float]:
    a = np.asarray([x for x in xs if x is not None], dtype=float)
    if a.size == 0:
        return {}
    return {f"p{q}": round(float(np.percentile(a, q)), 3) for q in (1, 5, 50, 95, 99)}


def evaluate(editor: LemoeEditor, records: list[BenchRecord], owner: dict[int, str]) -> dict:
    """Rel/Gen/Loc (teacher-forced), exact match, and how requests were routed."""
    prompts = [r.prompt for r in records]
    rephrases = [r.rephrase for r in records]
    targets = [r.target for r in records]
    rel = metrics.teacher_forced_scores(editor, prompts, targets)
    gen = metrics.teacher_forced_scores(editor, rephrases, targets)
    loc = metrics.locality_scores(editor, [r.loc_prompt for r in records], [r.loc_answer for r in records])
    ids = list(range(len(records)))

    def right_expert(routes) -> float:
        return _mean([float(rt.expert_name is not None and rt.expert_name == owner.get(i)) for rt, i in zip(routes, ids)])

    return {
        "rel": _mean(rel.accuracy),
        "gen": _mean(gen.accuracy),
        "loc": _mean(loc.accuracy),
        "rel_exact": _mean(metrics.exact_match(editor, prompts, targets)),
        "gen_exact": _mean(metrics.exact_match(editor, rephrases, targets)),
        "rel_routed_right": right_expert(rel.routes),
        "gen_routed_right": right_expert(gen.routes),
        "loc_fired": _mean([float(rt.expert_name is not None) for rt in loc.routes]),
        "gen_score_quantiles": _quantiles([rt.score for rt in gen.routes]),
        "loc_score_quantiles": _quantiles([rt.score for rt in loc.routes]),
    }


def run_quality(opts: QualityOptions) -> dict:
    records = load_records(opts.data, opts.format, limit=opts.edits)
    if len(records) < opts.edits:
        raise ValueError(f"{opts.data} has {len(records)} records; --edits {opts.edits} asked for more")
    loaded = load_model(opts.model_path, cache_dir=opts.cache_dir, device=opts.device)
    config = opts.config if opts.gate else replace(opts.config, gate_threshold=-2.0, subject_threshold=-2.0, subject_sentence_floor=-2.0)
    editor = LemoeEditor(loaded.model, loaded.tokenizer, config, device=loaded.device)
    trained = {
        "owner": {},
        "experts": 0,
        "subject_keyed_edits": 0,
        "train_s": 0.0,
        "s_per_edit": 0.0,
        "train_cpu_s": 0.0,
        "cpu_s_per_edit": 0.0,
    }
    if not opts.base_only:
        edits = [Edit(i, r.prompt, r.target, subject=r.subject) for i, r in enumerate(records)]
        trained = train_lifelong(editor, edits, batch_size=opts.batch_size, planning=opts.planning)
    log.info("evaluating %d records", len(records))
    scores = evaluate(editor, records, trained["owner"])
    return {
        "data": str(opts.data),
        "format": opts.format,
        "model": loaded.name,
        "edits": len(records),
        "experts": trained["experts"],
        "subject_keyed_edits": trained["subject_keyed_edits"],
        "batch_size": opts.batch_size,
        "planning": opts.planning,
        "gate": opts.gate,
        **{k: v for k, v in scores.items()},
        **{k: trained[k] for k in ("train_s", "s_per_edit", "train_cpu_s", "cpu_s_per_edit")},
        "torch_threads": torch.get_num_threads(),
        "config": asdict(config),
    }


def train_lifelong(editor: LemoeEditor, edits: list[Edit], *, batch_size: int, planning: bool = True, infer_subjects: bool = True) -> dict:
    """Plan `edits` into batches and train one expert per batch in sequence, each live before the
    next (the lifelong protocol). Edits without a subject get the one the model infers, as the
    server's worker does (`infer_subjects`; timed with training). Returns the edit -> expert map,
    counts and training times."""
    owner: dict[int, str] = {}
    keyed = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    inferred: dict = {}
    if infer_subjects:
        edits, inferred = editor.complete_subjects(edits)
    batches = editor.plan(edits, batch_size=batch_size, planning=planning)
    bar = tqdm(total=len(edits), desc="training", unit="edit", file=sys.stderr, dynamic_ncols=True)
    for k, batch in enumerate(batches):
        name = f"expert-{k:04d}"
        trained = editor.train(batch, name=name, progress=lambda s, loss: bar.set_postfix(expert=k, step=s, loss=f"{loss:.3f}"))
        editor.add_expert(trained.entry)
        keyed += int(trained.meta.get("subject_keyed_edits", 0))
        owner.update({e.edit_id: name for e in batch})
        bar.update(len(batch))
    bar.close()
    train_s = time.perf_counter() - started
    train_cpu_s = time.process_time() - cpu_started
    n = max(len(edits), 1)
    return {
        "owner": owner,
        "experts": len(batches),
        "subject_keyed_edits": keyed,
        "subjects_inferred": len(inferred),
        "train_s": round(train_s, 1),
        "s_per_edit": round(train_s / n, 3),
        # CPU seconds of this process: unlike wall time, not inflated by other jobs on the machine.
        "train_cpu_s": round(train_cpu_s, 1),
        "cpu_s_per_edit": round(train_cpu_s / n, 3),
    }


def format_table(result: dict) -> str:
    rows = [
        ("edits (T)", result["edits"]),
        ("experts", result["experts"]),
        ("edits with a subject key", result["subject_keyed_edits"]),
        ("Rel (teacher-forced)", result["rel"]),
        ("Gen (teacher-forced)", result["gen"]),
        ("Loc (teacher-forced)", result["loc"]),
        ("Rel exact (greedy)", result["rel_exact"]),
        ("Gen exact (greedy)", result["gen_exact"]),
        ("routed to own expert: edit", result["rel_routed_right"]),
        ("routed to own expert: paraphrase", result["gen_routed_right"]),
        ("locality prompts gated in", result["loc_fired"]),
        ("training seconds", result["train_s"]),
        ("seconds per edit", result["s_per_edit"]),
        ("training CPU seconds per edit", result["cpu_s_per_edit"]),
        ("torch threads", result["torch_threads"]),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{result['model']} on {Path(result['data']).name} ({result['format']}), planning={result['planning']}, gate={result['gate']}"]
    lines += [f"  {k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)


def main(opts: QualityOptions, *, as_json: bool) -> int:
    result = run_quality(opts)
    print(format_table(result))
    if as_json:
        print(json.dumps(result))
    return 0
