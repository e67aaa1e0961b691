"""Training cost, variant against variant: the same batches of edits trained under each editor
setting in turn, alternating (A B A B ...) so that a change in the machine's load reaches every
variant alike, on one thread by default (the load-independent figure is CPU seconds).

Each run trains one expert per batch of `batch_size` consecutive records, as the worker trains a
planned batch (edits as sent, with the data's subjects; no subject inference, no stack: training
does not read it). Steps and final losses are reported beside the time, so a variant that should
compute the same thing (e.g. `train_packing=false`) shows that it does.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from app.benchmarks.datasets import DataFormat, load_records
from app.engine.model_loader import load_model
from app.lemoe.config import LemoeConfig
from app.lemoe.editor import Edit, LemoeEditor


@dataclass(frozen=True)
class Variant:
    label: str
    config: LemoeConfig = field(default_factory=LemoeConfig)


@dataclass(frozen=True)
class TrainingOptions:
    data: Path
    format: DataFormat
    edits: int
    variants: tuple[Variant, ...]
    batch_size: int = 16
    repeats: int = 2
    threads: int | None = 1  # None: torch's own choice
    model_path: Path | None = None
    cache_dir: Path = Path("lemoe-data/model-cache")
    device: str = "auto"


def run_training(opts: TrainingOptions) -> dict:
    if not opts.variants:
        raise ValueError("no variant to train")
    if len({v.label for v in opts.variants}) != len(opts.variants):
        raise ValueError(f"variant labels must differ: {[v.label for v in opts.variants]}")
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    records = load_records(opts.data, opts.format)
    if len(records) < opts.edits:
        raise ValueError(f"{opts.data} has {len(records)} usable records; --edits {opts.edits} asked for more")
    edits = [Edit(i, r.prompt, r.target, subject=r.subject) for i, r in enumerate(records[: opts.edits])]
    batches = [edits[k : k + opts.batch_size] for k in range(0, len(edits), opts.batch_size)]
    loaded = load_model(opts.model_path, cache_dir=opts.cache_dir, device=opts.device)
    # The editors share the model: the adaptor is wrapped once, each trains under its own config.
    editors = {v.label: LemoeEditor(loaded.model, loaded.tokenizer, v.config, device=loaded.device) for v in opts.variants}
    runs: dict[str, list[dict]] = {v.label: [] for v in opts.variants}
    for repeat in range(opts.repeats):
        for variant in opts.variants:
            editor = editors[variant.label]
            steps, losses = [], []
            wall, cpu = time.perf_counter(), time.process_time()
            for k, batch in enumerate(batches):
                trained = editor.train(batch, name=f"expert-{k:04d}")
                steps.append(trained.steps)
                losses.append(trained.final_loss)
            runs[variant.label].append(
                {
                    "repeat": repeat,
                    "wall_s_per_edit": (time.perf_counter() - wall) / len(edits),
                    "cpu_s_per_edit": (time.process_time() - cpu) / len(edits),
                    "steps": steps,
                    "final_losses": [round(x, 5) for x in losses],
                }
            )
    first = opts.variants[0].label
    rows = {}
    for variant in opts.variants:
        done = runs[variant.label]
        cpu = statistics.median(r["cpu_s_per_edit"] for r in done)
        rows[variant.label] = {
            "overrides": _overrides(variant.config),
            "train_precision": editors[variant.label].train_precision,
            "cpu_s_per_edit": round(cpu, 3),
            "cpu_s_per_edit_runs": [round(r["cpu_s_per_edit"], 3) for r in done],
            "wall_s_per_edit": round(statistics.median(r["wall_s_per_edit"] for r in done), 3),
            "mean_steps": round(statistics.mean(s for r in done for s in r["steps"]), 2),
            "final_losses": done[-1]["final_losses"],
            "cpu_vs_first": round(cpu / statistics.median(r["cpu_s_per_edit"] for r in runs[first]), 3),
        }
    return {
        "data": str(opts.data),
        "format": opts.format,
        "model": loaded.name,
        "edits": len(edits),
        "experts_per_run": len(batches),
        "repeats": opts.repeats,
        "torch_threads": torch.get_num_threads(),
        "variants": rows,
    }


def _overrides(config: LemoeConfig) -> dict:
    defaults = asdict(LemoeConfig())
    return {k: v for k, v in asdict(config).items() if defaults[k] != v}


def format_table(result: dict) -> str:
    lines = [
        f"{result['model']} on {Path(result['data']).name} ({result['format']}), T={result['edits']} "
        f"({result['experts_per_run']} experts a run), {result['repeats']} alternating runs per variant, "
        f"{result['torch_threads']} torch thread(s)",
        f"  {'variant':<16}{'precision':>10}{'CPU s/edit':>11}{'vs first':>10}{'wall s/edit':>13}{'steps':>7}"
        "  CPU s/edit per run; final losses (last run)",
    ]
    for label, row in result["variants"].items():
        runs = " ".join(f"{x:.2f}" for x in row["cpu_s_per_edit_runs"])
        losses = " ".join(f"{x:.4f}" for x in row["final_losses"])
        lines.append(
            f"  {label:<16}{row['train_precision']:>10}{row['cpu_s_per_edit']:>11.3f}{row['cpu_vs_first']:>10.3f}"
            f"{row['wall_s_per_edit']:>13.3f}"
            f"{row['mean_steps']:>7.1f}  {runs}; {losses}"
        )
    return "\n".join(lines)


def main(opts: TrainingOptions, *, as_json: bool) -> int:
    result = run_training(opts)
    print(format_table(result))
    if as_json:
        print(json.dumps(result))
    return 0
