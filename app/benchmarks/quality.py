"""Lifelong editing quality: train T edits as a planned sequence of experts, then score all T."""

from __future__ import annotations

import json
import logging
import random
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from app.benchmarks.datasets import BenchRecord, DataFormat, load_records
from app.benchmarks.scope import SCOPE_KINDS, locality_scopes
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
    check: bool = False  # run the server's check before going live on each expert (and time it)
    # Score a seeded sample of this many of the T edited records (None: all of them). Every edit is
    # trained either way; at T = 10,000 scoring all of them costs as much as a third of training.
    score_sample: int | None = None


def _mean(xs: list[float]) -> float:
    return round(statistics.fmean(xs), 4) if xs else float("nan")


def _quantiles(xs: list[float]) -> dict[str, float]:
    a = np.asarray([x for x in xs if x is not None], dtype=float)
    if a.size == 0:
        return {}
    return {f"p{q}": round(float(np.percentile(a, q)), 3) for q in (1, 5, 50, 95, 99)}


def evaluate(
    editor: LemoeEditor,
    records: list[BenchRecord],
    owner: dict[int, str],
    ids: list[int] | None = None,
    edited: list[BenchRecord] | None = None,
) -> dict:
    """Rel/Gen/Loc (teacher-forced), exact match, and how requests were routed; `ids`: the
    records' edit ids (their places in the edited sequence; default 0..n-1); `edited`: every
    record the run edited (default `records`), against which Loc is also split by scope."""
    prompts = [r.prompt for r in records]
    rephrases = [r.rephrase for r in records]
    targets = [r.target for r in records]
    rel = metrics.teacher_forced_scores(editor, prompts, targets)
    gen = metrics.teacher_forced_scores(editor, rephrases, targets)
    loc = metrics.locality_scores(editor, [r.loc_prompt for r in records], [r.loc_answer for r in records])
    ids = list(range(len(records))) if ids is None else ids
    gen_exact = metrics.exact_match(editor, rephrases, targets)
    one_answer = [i for i, one in enumerate(edited_to_one_answer(records, records if edited is None else edited)) if one]

    def right_expert(routes) -> float:
        return _mean([float(rt.expert_name is not None and rt.expert_name == owner.get(i)) for rt, i in zip(routes, ids)])

    return {
        "rel": _mean(rel.accuracy),
        "gen": _mean(gen.accuracy),
        "loc": _mean(loc.accuracy),
        "rel_exact": _mean(metrics.exact_match(editor, prompts, targets)),
        "gen_exact": _mean(gen_exact),
        # Some files edit one fact several times to different answers (ZsRE dev: 253 of its first 600
        # records): a rewording can then only get one of them. Gen over the rest says how well edits
        # generalise.
        "one_answer": {
            "n": len(one_answer),
            "gen": _mean([gen.accuracy[i] for i in one_answer]),
            "gen_exact": _mean([gen_exact[i] for i in one_answer]),
        },
        "rel_routed_right": right_expert(rel.routes),
        "gen_routed_right": right_expert(gen.routes),
        "loc_fired": _mean([float(rt.expert_name is not None) for rt in loc.routes]),
        "gen_score_quantiles": _quantiles([rt.score for rt in gen.routes]),
        "loc_score_quantiles": _quantiles([rt.score for rt in loc.routes]),
        **_locality_by_scope(editor, records, records if edited is None else edited, loc),
    }


def edited_to_one_answer(records: Sequence[BenchRecord], edited: Sequence[BenchRecord]) -> list[bool]:
    """Per record: whether the run edits its subject to one answer only (no edited record of the
    same subject has another target; a record without a subject counts as one)."""
    answers: dict[str, set[str]] = {}
    for r in edited:
        if r.subject and r.subject.strip():
            answers.setdefault(r.subject.strip().lower(), set()).add(r.target.strip().lower())
    return [not (r.subject and r.subject.strip()) or len(answers.get(r.subject.strip().lower(), ())) <= 1 for r in records]


def _locality_by_scope(editor: LemoeEditor, records: list[BenchRecord], edited: list[BenchRecord], loc: metrics.PairScores) -> dict:
    """Loc over the locality prompts that ask no fact the run edited ("loc_outside_edits"), and
    per scope kind (app.benchmarks.scope) the count, Loc and the share gated in; for the prompts
    that ask another edit's fact, that edit's new answer scored on them as Rel is."""
    scopes = locality_scopes(edited, records)
    by_kind = {}
    for kind in SCOPE_KINDS:
        at = [i for i, s in enumerate(scopes) if s.kind == kind]
        by_kind[kind] = {
            "n": len(at),
            "loc": _mean([loc.accuracy[i] for i in at]),
            "fired": _mean([float(loc.routes[i].expert_name is not None) for i in at]),
        }
    asked = [(records[i].loc_prompt, edited[s.edit].target) for i, s in enumerate(scopes) if s.kind == "another edit's fact"]
    other_fact = metrics.teacher_forced_scores(editor, [p for p, _ in asked], [t for _, t in asked]).accuracy if asked else []
    by_kind["another edit's fact"]["other_edit_rel"] = _mean(other_fact)
    outside = [loc.accuracy[i] for i, s in enumerate(scopes) if s.kind != "another edit's fact"]
    return {"loc_outside_edits": _mean(outside), "loc_by_scope": by_kind}


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
        "steps_per_expert": None,
        "experts_at_step_limit": 0,
        "loss_at_step_limit": {},
        "train_s": 0.0,
        "s_per_edit": 0.0,
        "train_cpu_s": 0.0,
        "cpu_s_per_edit": 0.0,
    }
    if not opts.base_only:
        edits = [Edit(i, r.prompt, r.target, subject=r.subject) for i, r in enumerate(records)]
        trained = train_lifelong(editor, edits, batch_size=opts.batch_size, planning=opts.planning, check=opts.check)
    ids = list(range(len(records)))
    if opts.score_sample is not None and opts.score_sample < len(records):
        ids = sorted(random.Random(opts.config.seed).sample(ids, opts.score_sample))
    log.info("evaluating %d of %d records", len(ids), len(records))
    scored_from = time.perf_counter()
    scores = evaluate(editor, [records[i] for i in ids], trained["owner"], ids, edited=records)
    score_s = time.perf_counter() - scored_from
    return {
        "data": str(opts.data),
        "format": opts.format,
        "model": loaded.name,
        "edits": len(records),
        "experts": trained["experts"],
        "subject_keyed_edits": trained["subject_keyed_edits"],
        **{k: trained[k] for k in ("steps_per_expert", "experts_at_step_limit", "loss_at_step_limit")},
        "batch_size": opts.batch_size,
        "planning": opts.planning,
        "gate": opts.gate,
        **{k: v for k, v in scores.items()},
        **{k: trained[k] for k in ("train_s", "s_per_edit", "train_cpu_s", "cpu_s_per_edit")},
        "train_precision": editor.train_precision,
        **({"check": summarise_checks(trained["checks"], trained["train_s"])} if opts.check and not opts.base_only else {}),
        "scored": len(ids),
        "score_s": round(score_s, 1),
        **stack_memory(editor, 0 if opts.base_only else len(records)),
        # Linux reports kilobytes: the most resident memory this process held, model included.
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "torch_threads": torch.get_num_threads(),
        "config": asdict(config),
    }


def stack_memory(editor: LemoeEditor, edits: int) -> dict:
    """Bytes the live stack's experts hold in memory: their weights (and codes) and their routing
    keys (sentence anchors, subject, span and relation keys); per edit of the `edits` trained."""
    weights = keys = 0
    for entry in editor.stack:
        weights += sum(p.numel() * p.element_size() for p in entry.module.parameters())
        held = (entry.anchors, entry.subject_anchors, entry.relation_anchors, entry.subject_lengths, entry.subject_span_anchors)
        keys += sum(t.numel() * t.element_size() for t in held if t is not None)
    return {
        "expert_weight_bytes": weights,
        "expert_key_bytes": keys,
        "expert_bytes_per_edit": round((weights + keys) / edits) if edits else None,
    }


def train_lifelong(
    editor: LemoeEditor, edits: list[Edit], *, batch_size: int, planning: bool = True, infer_subjects: bool = True, check: bool = False
) -> dict:
    """Plan `edits` into batches and train one expert per batch in sequence, each live before the
    next (the lifelong protocol). Edits without a subject get the one the model infers, as the
    server's worker does (`infer_subjects`; timed with training). Returns the edit -> expert map,
    counts and training times; with `check`, also each expert's check before going live (as the
    server runs it, timed apart from training; every expert goes live whatever its figures)."""
    owner: dict[int, str] = {}
    keyed = 0
    steps: list[int] = []
    unconverged: list[float] = []  # final losses of the experts the step limit stopped
    checks: list[dict] = []
    check_s = 0.0
    by_id = {e.edit_id: e for e in edits}
    started, cpu_started = time.perf_counter(), time.process_time()
    inferred: dict = {}
    if infer_subjects:
        edits, inferred = editor.complete_subjects(edits)
    batches = editor.plan(edits, batch_size=batch_size, planning=planning)
    bar = tqdm(total=len(edits), desc="training", unit="edit", file=sys.stderr, dynamic_ncols=True)
    for k, batch in enumerate(batches):
        name = f"expert-{k:04d}"
        trained = editor.train(batch, name=name, progress=lambda s, loss: bar.set_postfix(expert=k, step=s, loss=f"{loss:.3f}"))
        if check:
            check_started = time.perf_counter()
            result = _check(editor, trained.entry, batch, by_id)
            check_s += time.perf_counter() - check_started
            checks.append({**result.to_dict(), "train_seconds": round(trained.seconds, 3)})
        editor.add_expert(trained.entry)
        keyed += int(trained.meta.get("subject_keyed_edits", 0))
        steps.append(trained.steps)
        if trained.final_loss >= editor.config.loss_threshold:
            unconverged.append(trained.final_loss)
        owner.update({e.edit_id: name for e in batch})
        bar.update(len(batch))
    bar.close()
    train_s = time.perf_counter() - started - check_s
    train_cpu_s = time.process_time() - cpu_started
    n = max(len(edits), 1)
    return {
        "owner": owner,
        "experts": len(batches),
        "subject_keyed_edits": keyed,
        "subjects_inferred": len(inferred),
        "steps_per_expert": _mean(steps),
        "experts_at_step_limit": len(unconverged),
        "loss_at_step_limit": _quantiles(unconverged),
        "train_s": round(train_s, 1),
        "s_per_edit": round(train_s / n, 3),
        # CPU seconds of this process: unlike wall time, not inflated by other jobs on the machine.
        "train_cpu_s": round(train_cpu_s, 1),
        "cpu_s_per_edit": round(train_cpu_s / n, 3),
        "checks": checks,
    }


def _check(editor: LemoeEditor, entry, batch: list[Edit], by_id: dict[int, Edit]):
    """The server's check of one new expert (app.engine.checks), its sample of live edits chosen
    as the trainer chooses it."""
    from app.config import Settings
    from app.engine.checks import check_candidate, nearest_live_edits

    exclude = {e.edit_id for e in batch} | {old for _, old in editor.superseded(batch, entry)}
    nearest = nearest_live_edits(editor, entry, limit=Settings.model_fields["check_others"].default, exclude=exclude)
    return check_candidate(editor, entry, batch, [by_id[i] for i in nearest])


def summarise_checks(checks: list[dict], train_s: float) -> dict:
    """The checks' cost against training time, their figures, and how many experts the
    server's default minimums would keep out."""
    from app.config import Settings

    defaults = {k: Settings.model_fields[k].default for k in ("check_min_edit_rate", "check_min_locality", "check_min_others_kept")}
    seconds = sum(c["seconds"] for c in checks)
    failing = [
        c
        for c in checks
        if c["edit_rate"] < defaults["check_min_edit_rate"]
        or c["locality_rate"] < defaults["check_min_locality"]
        or c["others_rate"] < defaults["check_min_others_kept"]
    ]
    return {
        "experts": len(checks),
        "seconds": round(seconds, 2),
        "fraction_of_training": round(seconds / train_s, 3) if train_s else None,
        "edit_rate": _mean([c["edit_rate"] for c in checks]),
        "edit_rate_min": min((c["edit_rate"] for c in checks), default=None),
        "locality_rate_min": min((c["locality_rate"] for c in checks), default=None),
        "others_rate": _mean([c["others_rate"] for c in checks]),
        "others_rate_min": min((c["others_rate"] for c in checks), default=None),
        "experts_below_default_minimums": len(failing),
        "minimums": defaults,
        "per_expert": checks,
    }


def format_table(result: dict) -> str:
    rows = [
        ("edits (T)", result["edits"]),
        ("experts", result["experts"]),
        ("edits with a subject key", result["subject_keyed_edits"]),
        ("training steps per expert", result["steps_per_expert"]),
        ("experts stopped by the step limit", _at_limit(result)),
        ("Rel (teacher-forced)", result["rel"]),
        ("Gen (teacher-forced)", result["gen"]),
        ("Loc (teacher-forced)", result["loc"]),
        ("Rel exact (greedy)", result["rel_exact"]),
        ("Gen exact (greedy)", result["gen_exact"]),
        (
            "Gen / exact, subjects edited to one answer",
            f"{result['one_answer']['gen']} / {result['one_answer']['gen_exact']} (n {result['one_answer']['n']})",
        ),
        ("routed to own expert: edit", result["rel_routed_right"]),
        ("routed to own expert: paraphrase", result["gen_routed_right"]),
        ("locality prompts gated in", result["loc_fired"]),
        ("Loc, prompts asking no edited fact", result["loc_outside_edits"]),
        *_scope_rows(result["loc_by_scope"]),
        ("training seconds", result["train_s"]),
        ("seconds per edit", result["s_per_edit"]),
        ("training CPU seconds per edit", result["cpu_s_per_edit"]),
        ("training precision", result["train_precision"]),
        ("records scored", f"{result['scored']} of {result['edits']} ({result['score_s']} s)"),
        ("expert bytes per edit in memory", result["expert_bytes_per_edit"]),
        ("peak RSS MB", result["peak_rss_mb"]),
        ("torch threads", result["torch_threads"]),
    ]
    if "check" in result:
        c = result["check"]
        rows += [
            ("check seconds (all experts)", c["seconds"]),
            ("check / training time", c["fraction_of_training"]),
            ("check edit rate (mean, min)", f"{c['edit_rate']}, {c['edit_rate_min']}"),
            ("check locality kept (min)", c["locality_rate_min"]),
            ("check live edits kept (mean, min)", f"{c['others_rate']}, {c['others_rate_min']}"),
            ("experts below default minimums", c["experts_below_default_minimums"]),
        ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{result['model']} on {Path(result['data']).name} ({result['format']}), planning={result['planning']}, gate={result['gate']}"]
    lines += [f"  {k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)


def _at_limit(result: dict) -> str:
    at_limit, losses = result["experts_at_step_limit"], result["loss_at_step_limit"]
    if not at_limit:
        return "0"
    return f"{at_limit} (final loss median {losses['p50']}, p95 {losses['p95']})"


def _scope_rows(by_kind: dict) -> list[tuple[str, str]]:
    rows = []
    for kind, figures in by_kind.items():
        row = f"n {figures['n']}, Loc {figures['loc']}, gated in {figures['fired']}"
        if "other_edit_rel" in figures:
            row += f", that edit's answer (Rel) {figures['other_edit_rel']}"
        rows.append((f"  locality: {kind}", row))
    return rows


def main(opts: QualityOptions, *, as_json: bool) -> int:
    result = run_quality(opts)
    print(format_table(result))
    if as_json:
        print(json.dumps(result))
    return 0
