"""What a stack of many experts costs on disk and in memory, and how long loading it takes (the
checksum of every file, as a server's start and every replica's sync do).

The experts are synthetic (random weights and keys of the bundled model's width, every anchor
with a subject and a relation key): file sizes and load times do not depend on what they learned.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from app.engine.experts import ExpertLoader, ExpertSpec
from app.lemoe.config import LemoeConfig
from app.lemoe.expert import Expert, ExpertEntry
from app.lemoe.io import WEIGHTS_FILE, save_expert

SMOLLM2_HIDDEN = 576  # the bundled SmolLM2-135M's width
SMOLLM2_LAYERS = 30
SMOLLM2_VOCAB = 49152


@dataclass(frozen=True)
class ExpertFilesOptions:
    experts: int = 625
    edits_per_expert: int = 16
    hidden_size: int = SMOLLM2_HIDDEN
    expert_hidden: int = LemoeConfig().expert_hidden
    directory: Path | None = None  # None: a temporary directory, removed afterwards
    threads: int | None = None  # torch threads (None: torch's default)
    seed: int = 0


def synthetic_entry(name: str, opts: ExpertFilesOptions, generator: torch.Generator) -> ExpertEntry:
    n, d = opts.edits_per_expert, opts.hidden_size
    module = Expert(d, opts.expert_hidden, generator=generator, codes=n)
    torch.nn.init.normal_(module.up.weight, std=0.02, generator=generator)
    torch.nn.init.normal_(module.codes, std=1.0, generator=generator)
    return ExpertEntry(
        name=name,
        module=module,
        anchors=torch.randn(n, d, generator=generator),
        edit_ids=list(range(n)),
        meta={},
        subject_anchors=torch.randn(n, d, generator=generator),
        relation_anchors=torch.nn.functional.normalize(torch.randn(n, d, generator=generator), dim=-1),
        subject_lengths=torch.full((n,), 2, dtype=torch.long),
        subject_span_anchors=torch.randn(n, d, generator=generator),
        subject_token_ids=torch.randint(0, SMOLLM2_VOCAB, (n, 2), generator=generator),
    )


def entry_bytes(entry: ExpertEntry) -> tuple[int, int]:
    """(bytes of the module's weights, bytes of its keys) in memory."""
    weights = sum(p.element_size() * p.nelement() for p in entry.module.parameters())
    keys = [
        entry.anchors,
        entry.subject_anchors,
        entry.relation_anchors,
        entry.subject_lengths,
        entry.subject_span_anchors,
        entry.subject_token_ids,
    ]
    return weights, sum(t.element_size() * t.nelement() for t in keys if t is not None)


def measure(opts: ExpertFilesOptions, root: Path, dtype: torch.dtype) -> dict:
    generator = torch.Generator().manual_seed(opts.seed)
    specs = []
    started = time.perf_counter()
    for k in range(opts.experts):
        name = f"synthetic-{k}"
        sha = save_expert(synthetic_entry(name, opts, generator), root / name, weights_dtype=dtype)
        specs.append(ExpertSpec(name=name, path=root / name, sha256=sha))
    save_s = time.perf_counter() - started
    disk = sum(f.stat().st_size for spec in specs for f in spec.path.iterdir())
    weights_file = sum((spec.path / WEIGHTS_FILE).stat().st_size for spec in specs)
    loader = ExpertLoader(LemoeConfig().serving(SMOLLM2_LAYERS, opts.hidden_size))
    started = time.perf_counter()
    entries = [loader.load(spec) for spec in specs]
    load_s = time.perf_counter() - started
    weights, keys = map(sum, zip(*(entry_bytes(e) for e in entries), strict=True))
    edits = opts.experts * opts.edits_per_expert
    return {
        "stored_as": str(dtype).removeprefix("torch."),
        "experts": opts.experts,
        "edits": edits,
        "save_s": round(save_s, 2),
        "load_s": round(load_s, 2),
        "disk_bytes_per_edit": round(disk / edits),
        "weights_file_bytes_per_edit": round(weights_file / edits),
        "memory_weights_bytes_per_edit": round(weights / edits),
        "memory_keys_bytes_per_edit": round(keys / edits),
    }


def run_expert_files(opts: ExpertFilesOptions) -> dict:
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    base = Path(tempfile.mkdtemp(prefix="lemoe-expert-files-")) if opts.directory is None else opts.directory
    rows = []
    try:
        for dtype in (torch.float32, torch.float16):
            root = base / str(dtype).removeprefix("torch.")
            root.mkdir(parents=True, exist_ok=True)
            rows.append(measure(opts, root, dtype))
    finally:
        if opts.directory is None:
            shutil.rmtree(base, ignore_errors=True)
    return {
        "torch_threads": torch.get_num_threads(),
        "rows": rows,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
    }


def format_table(result: dict) -> str:
    o = result["options"]
    lines = [
        f"{o['experts']} experts of {o['edits_per_expert']} edits (width {o['hidden_size']}, expert hidden {o['expert_hidden']}); "
        f"loaded through ExpertLoader (checksums included), served in float32; {result['torch_threads']} torch threads",
        f"  {'stored as':>9} {'edits':>6} {'load s':>7} {'save s':>7} {'disk B/edit':>11} {'weights file B/edit':>19} "
        f"{'RAM weights B/edit':>18} {'RAM keys B/edit':>15}",
    ]
    for r in result["rows"]:
        lines.append(
            f"  {r['stored_as']:>9} {r['edits']:>6} {r['load_s']:>7} {r['save_s']:>7} {r['disk_bytes_per_edit']:>11} "
            f"{r['weights_file_bytes_per_edit']:>19} {r['memory_weights_bytes_per_edit']:>18} {r['memory_keys_bytes_per_edit']:>15}"
        )
    return "\n".join(lines)


def main(opts: ExpertFilesOptions, *, as_json: bool) -> int:
    result = run_expert_files(opts)
    print(format_table(result))
    if as_json:
        print(json.dumps(result))
    return 0
