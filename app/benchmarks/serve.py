"""Serving throughput under concurrency: C client threads call the generation scheduler (the one
`/v1/generate` and the OpenAI routes use) back to back, and the run reports completion tokens per
second and request latency, with an empty stack and with many live experts.

The live experts are synthetic (random anchors and keys, untrained modules): what they cost is
routing at each prefill, which is what grows with their number; the prompts reach none of them.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from app.engine.model_loader import load_model
from app.engine.scheduler import Scheduler
from app.lemoe.batching import RowRequest
from app.lemoe.config import LemoeConfig
from app.lemoe.editor import LemoeEditor, SamplingParams
from app.lemoe.expert import Expert, ExpertEntry

# Open-ended starts: the model writes on for the whole max_new_tokens (questions end early, and
# then a request is mostly its prefill, which is not what tokens per second is about).
PROMPTS: tuple[str, ...] = (
    "Once upon a time, in a small village by the sea,",
    "The history of the printing press begins",
    "Here is a long list of fruits: apples,",
    "In the year 2050, most cities will",
    "The recipe for a good tomato soup starts with",
    "My grandfather used to tell me stories about",
    "The main causes of the First World War were",
    "A good way to learn to play the piano is",
    "The old lighthouse keeper climbed the stairs and",
    "Photosynthesis is the process by which",
    "Dear diary, today was a strange day because",
    "The rules of chess are simple: each player",
    "When the spaceship finally landed on Mars,",
    "The best advice I ever got about writing was",
    "Rivers shape the land around them by",
    "The morning market was already busy when",
)


@dataclass(frozen=True)
class ServeOptions:
    concurrency: tuple[int, ...] = (1, 4, 16)
    experts: tuple[int, ...] = (0, 1000)
    requests: int = 32  # per concurrency level (at least the concurrency)
    max_new_tokens: int = 32
    edits_per_expert: int = 16
    max_batch: int = 16
    model_path: Path | None = None
    cache_dir: Path = Path("lemoe-data/model-cache")
    device: str = "auto"
    seed: int = 0


def synthetic_stack(editor: LemoeEditor, count: int, edits_per_expert: int, seed: int) -> list[ExpertEntry]:
    """`count` experts of `edits_per_expert` anchors each, every anchor with a subject and a
    relation key, so a request pays for every kind of key."""
    generator = torch.Generator().manual_seed(seed)
    d, hidden = editor.hidden_size, editor.config.expert_hidden
    entries = []
    for k in range(count):
        anchors = torch.randn(edits_per_expert, d, generator=generator)
        entries.append(
            ExpertEntry(
                name=f"synthetic-{k}",
                module=Expert(
                    d, hidden, editor.config.expert_kind, generator=generator, codes=edits_per_expert if editor.config.edit_codes else 0
                ),
                anchors=anchors,
                edit_ids=[k * edits_per_expert + i for i in range(edits_per_expert)],
                meta={"subject_view": {"context": editor.config.subject_context, "lowercase": editor.config.subject_lowercase}},
                subject_anchors=torch.randn(edits_per_expert, d, generator=generator),
                relation_anchors=torch.nn.functional.normalize(torch.randn(edits_per_expert, d, generator=generator), dim=-1),
                subject_lengths=torch.full((edits_per_expert,), 2, dtype=torch.long),
                subject_span_anchors=torch.randn(edits_per_expert, d, generator=generator),
                subject_token_ids=torch.randint(0, len(editor.tokenizer), (edits_per_expert, 2), generator=generator),
            )
        )
    return entries


def _level(scheduler: Scheduler, stack: tuple[ExpertEntry, ...], concurrency: int, requests: int, params: SamplingParams) -> dict:
    """C clients, each sending its next request as soon as its last one is answered."""
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(max(requests, concurrency))]
    latencies: list[float] = []
    tokens: list[int] = []
    routed: list[bool] = []
    taken = iter(range(len(prompts)))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                i = next(taken, None)
            if i is None:
                return
            started = time.perf_counter()
            g = scheduler.run(RowRequest(prompts[i], params, stack))
            with lock:
                latencies.append(time.perf_counter() - started)
                tokens.append(g.completion_tokens)
                routed.append(g.route.expert_name is not None)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "tokens": sum(tokens),
        "seconds": round(wall, 2),
        "tokens_per_s": round(sum(tokens) / wall, 1),
        "p50_s": round(statistics.median(ordered), 3),
        "p95_s": round(ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))], 3),
        "routed": sum(routed),
    }


def run_serve(opts: ServeOptions) -> dict:
    loaded = load_model(opts.model_path, cache_dir=opts.cache_dir, device=opts.device)
    editor = LemoeEditor(loaded.model, loaded.tokenizer, LemoeConfig(), device=loaded.device)
    params = SamplingParams(max_new_tokens=opts.max_new_tokens)
    rows = []
    for count in opts.experts:
        editor.set_stack(synthetic_stack(editor, count, opts.edits_per_expert, opts.seed))
        stack = editor.stack
        scheduler = Scheduler(editor, max_batch=opts.max_batch, max_waiting=max(opts.concurrency))
        _level(scheduler, stack, 1, 2, params)  # warm-up: the first passes of a process are slow
        for c in opts.concurrency:
            rows.append({"experts": count, "anchors": count * opts.edits_per_expert, **_level(scheduler, stack, c, opts.requests, params)})
        scheduler.close()
    return {
        "model": loaded.name,
        "device": str(loaded.device),
        "torch_threads": torch.get_num_threads(),
        "rows": rows,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
    }


def format_table(result: dict) -> str:
    opts = result["options"]
    lines = [
        f"{result['model']} on {result['device']} ({result['torch_threads']} threads), greedy {opts['max_new_tokens']} tokens per "
        f"request, batch of at most {opts['max_batch']}, clients send back to back",
        f"  {'experts':>7} {'anchors':>7} {'clients':>7} {'requests':>8} {'tokens/s':>9} {'x 1 client':>10} {'p50 s':>7} {'p95 s':>7}",
    ]
    single = {r["experts"]: r["tokens_per_s"] for r in result["rows"] if r["concurrency"] == 1}
    for r in result["rows"]:
        base = single.get(r["experts"])
        ratio = f"{r['tokens_per_s'] / base:.2f}" if base else "–"
        lines.append(
            f"  {r['experts']:>7} {r['anchors']:>7} {r['concurrency']:>7} {r['requests']:>8} {r['tokens_per_s']:>9} {ratio:>10} "
            f"{r['p50_s']:>7} {r['p95_s']:>7}"
        )
    return "\n".join(lines)


def main(opts: ServeOptions, *, as_json: bool) -> int:
    result = run_serve(opts)
    print(format_table(result))
    if as_json:
        print(json.dumps(result))
    return 0
