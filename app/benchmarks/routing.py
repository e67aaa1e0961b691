"""What routing costs per request as the stack grows: the anchor search (sentence, subject and
relation and span keys) and the whole route of a prompt, beside a greedy generation without experts.

The anchors are synthetic (`synthetic_stack`: every anchor has every key, so a request
pays for every kind); the prompts reach none of them, as most requests reach no edit.
"""

from __future__ import annotations

import gc
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from app.benchmarks.serve import synthetic_stack
from app.engine.model_loader import load_model
from app.lemoe.config import LemoeConfig
from app.lemoe.editor import Generation, LemoeEditor, SamplingParams
from app.lemoe.expert import ExpertEntry
from app.lemoe.reference import REFERENCE_PROMPTS

MB = 1024 * 1024


@dataclass(frozen=True)
class RoutingOptions:
    anchors: tuple[int, ...] = (1000, 10000, 100000)
    edits_per_expert: int = 16
    repeats: int = 5  # timed runs of each measurement; the median is reported
    max_new_tokens: int = 32
    model_path: Path | None = None
    cache_dir: Path = Path("lemoe-data/model-cache")
    device: str = "auto"
    threads: int | None = None  # torch threads (None: torch's default)
    # The worst case: a sentence floor of -1 puts every anchor above it, so each request compares
    # its tokens with every subject key (random synthetic anchors are otherwise all far below it).
    every_anchor_a_candidate: bool = False
    seed: int = 0


def full_length_prompt(editor: LemoeEditor, params: SamplingParams) -> tuple[str, Generation]:
    """The first reference prompt whose greedy answer runs to max_new_tokens (else the longest)."""
    best = None
    for prompt in REFERENCE_PROMPTS:
        [g] = editor.generate([prompt], params)
        if best is None or g.completion_tokens > best[1].completion_tokens:
            best = (prompt, g)
        if g.completion_tokens >= params.max_new_tokens:
            break
    assert best is not None
    return best


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def key_bytes(stack: tuple[ExpertEntry, ...]) -> int:
    """Bytes of the experts' anchors and keys (what grows with the number of edits besides the
    expert modules themselves)."""
    tensors = [
        t
        for e in stack
        for t in (e.anchors, e.subject_anchors, e.relation_anchors, e.subject_lengths, e.subject_span_anchors)
        if t is not None
    ]
    return sum(t.element_size() * t.nelement() for t in tensors)


def run_routing(opts: RoutingOptions) -> dict:
    loaded = load_model(opts.model_path, cache_dir=opts.cache_dir, device=opts.device)
    config = LemoeConfig(subject_sentence_floor=-1.0) if opts.every_anchor_a_candidate else LemoeConfig()
    editor = LemoeEditor(loaded.model, loaded.tokenizer, config, device=loaded.device)
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    params = SamplingParams(max_new_tokens=opts.max_new_tokens)
    editor.set_stack([])
    prompt, plain = full_length_prompt(editor, params)
    rows = []
    for count in opts.anchors:
        experts = max(1, -(-count // opts.edits_per_expert))
        editor.set_stack([])
        gc.collect()
        editor.set_stack(synthetic_stack(editor, experts, opts.edits_per_expert, opts.seed))
        stack = editor.stack
        anchors = sum(len(e.anchors) for e in stack)
        started = time.perf_counter()
        editor.router.build_index(stack)  # what set_stack did when it swapped this stack in
        index_ms = (time.perf_counter() - started) * 1000
        index = editor.router.index(stack)
        # The search alone, on the inputs a generation's prefill has at hand.
        queries = editor.queries([prompt])
        read = editor.read_routes([prompt], queries=queries)
        search_ms = median_ms(
            lambda: editor.router.route(queries, stack, read.states, read.mask, read.relation_weights, subject_tokens=read.tokens),  # noqa: B023
            opts.repeats,
        )
        route_ms = median_ms(lambda: editor.route([prompt]), opts.repeats)
        [routed] = editor.generate([prompt], params)
        # Measured now, beside the generation with the stack: a busy machine's speed drifts.
        generation_ms = median_ms(lambda: editor.generate([prompt], params, stack=()), opts.repeats)
        routed_ms = median_ms(lambda: editor.generate([prompt], params), opts.repeats)
        rows.append(
            {
                "anchors": anchors,
                "experts": experts,
                "index_build_ms": round(index_ms, 1),
                "search_ms": round(search_ms, 2),
                "route_ms": round(route_ms, 2),
                "generation_ms": round(generation_ms, 1),
                "search_pct": round(100 * search_ms / generation_ms, 2),
                "generation_with_stack_ms": round(routed_ms, 1),
                "same_text": routed.text == plain.text and routed.route.expert_index is None,
                "key_mb_per_10k": round(key_bytes(stack) / MB * 10000 / anchors, 1),
                "index_mb_per_10k": round(index.nbytes / MB * 10000 / anchors, 1),
            }
        )
    editor.set_stack([])
    return {
        "model": loaded.name,
        "device": str(loaded.device),
        "torch_threads": torch.get_num_threads(),
        "prompt": prompt,
        "completion_tokens": plain.completion_tokens,
        "rows": rows,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
    }


def format_table(result: dict) -> str:
    lines = [
        f"{result['model']} on {result['device']} ({result['torch_threads']} threads); one prompt, greedy "
        f"{result['completion_tokens']} tokens; median of {result['options']['repeats']} runs"
        + ("; every anchor above the sentence floor (worst case)" if result["options"]["every_anchor_a_candidate"] else ""),
        f"  {'anchors':>7} {'experts':>7} {'search ms':>9} {'% of gen':>8} {'route ms':>8} {'gen ms':>7} {'gen+stack ms':>12} "
        f"{'index ms':>8} {'keys MB/10K':>11} {'index MB/10K':>12} {'same text':>9}",
    ]
    for r in result["rows"]:
        lines.append(
            f"  {r['anchors']:>7} {r['experts']:>7} {r['search_ms']:>9} {r['search_pct']:>8} {r['route_ms']:>8} {r['generation_ms']:>7} "
            f"{r['generation_with_stack_ms']:>12} {r['index_build_ms']:>8} {r['key_mb_per_10k']:>11} {r['index_mb_per_10k']:>12} "
            f"{'yes' if r['same_text'] else 'NO':>9}"
        )
    lines.append(
        "  search: the anchor search per request (AnchorRouter.route); route: LemoeEditor.route (query and subject-state "
        "passes + search); gen: greedy generation, empty stack; gen+stack: the same with the stack live; index: a full "
        "build, once per stack swapped in (a stack that only gained experts extends the previous index)"
    )
    return "\n".join(lines)


def main(opts: RoutingOptions, *, as_json: bool) -> int:
    result = run_routing(opts)
    print(format_table(result))
    if as_json:
        print(json.dumps(result))
    return 0
