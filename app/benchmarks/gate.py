"""Gate calibration: how well the routing query separates paraphrases from unrelated prompts.

No training is needed: routing depends only on the frozen model's queries. For each setting
(route layer, pooling) it reports, at several thresholds, the share of paraphrases whose nearest
edit anchor is their own edit and clears the threshold, and the share of locality prompts that
clear it against any anchor (those would reach an expert and could change).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from app.benchmarks.datasets import DataFormat, load_records
from app.engine.model_loader import load_model
from app.lemoe.config import LemoeConfig
from app.lemoe.editor import LemoeEditor
from app.lemoe.layer import decoder_layers
from app.lemoe.reference import REFERENCE_PROMPTS

THRESHOLDS = (0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8)


@dataclass(frozen=True)
class GateOptions:
    data: Path
    format: DataFormat
    edits: int
    layers: tuple[int, ...] = ()
    poolings: tuple[str, ...] = ("mean", "last", "mean_last")  # also "subject": see run_subject_keys
    model_path: Path | None = None
    cache_dir: Path = Path("lemoe-data/model-cache")
    device: str = "auto"


def run_gate(opts: GateOptions) -> list[dict]:
    records = load_records(opts.data, opts.format, limit=opts.edits)
    loaded = load_model(opts.model_path, cache_dir=opts.cache_dir, device=opts.device)
    n_layers = len(decoder_layers(loaded.model))
    default_layer = LemoeConfig().resolved_layer(n_layers)
    rows = []
    if "subject" in opts.poolings:
        rows += run_subject_keys(opts, opts.layers or (default_layer,))
    for layer in opts.layers or (default_layer,):
        for pooling in [p for p in opts.poolings if p != "subject"]:
            # A fresh model copy per setting: probes and wrappers are installed per editor.
            model = load_model(opts.model_path, cache_dir=opts.cache_dir, device=opts.device).model
            config = replace(LemoeConfig(), layer=max(layer, default_layer), route_layer=layer, pooling=pooling)
            editor = LemoeEditor(model, loaded.tokenizer, config, device=loaded.device)
            norm = editor.router.normalise
            anchors = norm(editor.queries([r.prompt for r in records]))
            para = norm(editor.queries([r.rephrase for r in records])) @ anchors.T
            loc = norm(editor.queries([r.loc_prompt for r in records])) @ anchors.T
            own = para.argmax(dim=1) == torch.arange(len(records))
            best_para, best_loc = para.max(dim=1).values, loc.max(dim=1).values
            row = {"route_layer": layer, "pooling": pooling, "nearest_is_own": round(float(own.float().mean()), 3)}
            for t in THRESHOLDS:
                row[f"para@{t}"] = round(float((own & (best_para >= t)).float().mean()), 3)
                row[f"loc@{t}"] = round(float((best_loc >= t).float().mean()), 3)
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


@torch.no_grad()
def run_subject_keys(opts: GateOptions, layers: tuple[int, ...]) -> list[dict]:
    """The alternative keys measured for CounterFact's near neighbours (not a routing mode yet):
    the anchor is the edit prompt's hidden state at its subject's last token, the score of a
    prompt is the best over its tokens (the first excluded: it carries no context), and every
    dimension is standardised on reference-prompt tokens (a few dimensions carry massive
    activations that make raw cosines ~1 between unrelated tokens)."""
    records = [r for r in load_records(opts.data, opts.format, limit=opts.edits) if r.subject]
    loaded = load_model(opts.model_path, cache_dir=opts.cache_dir, device=opts.device)
    tok, model = loaded.tokenizer, loaded.model

    def states(texts: list[str], layer: int) -> list[torch.Tensor]:
        out = []
        for text in texts:
            enc = tok(text, return_tensors="pt").to(loaded.device)
            out.append(model(**enc, output_hidden_states=True).hidden_states[layer][0].float())
        return out

    def last_subject_token(prompt: str, subject: str) -> int | None:
        start = prompt.lower().find(subject.lower())
        if start < 0:
            return None
        end = start + len(subject)
        spans = tok(prompt, return_offsets_mapping=True)["offset_mapping"]
        hits = [k for k, (a, b) in enumerate(spans) if a < end and b > start]
        return hits[-1] if hits and hits[-1] > 0 else None

    index = [last_subject_token(r.prompt, r.subject) for r in records]
    keep = [i for i, k in enumerate(index) if k is not None]
    rows = []
    for layer in layers:
        ref = torch.cat([h[1:] for h in states(list(REFERENCE_PROMPTS), layer)])
        mu, sd = ref.mean(0), ref.std(0) + 1e-3

        def norm(x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.normalize((x - mu) / sd, dim=-1)

        prompts = states([records[i].prompt for i in keep], layer)
        anchors = torch.stack([norm(h[index[i]]) for h, i in zip(prompts, keep)])
        para = torch.stack([(norm(h[1:]) @ anchors.T).max(0).values for h in states([records[i].rephrase for i in keep], layer)])
        loc = torch.stack([(norm(h[1:]) @ anchors.T).max(0).values for h in states([records[i].loc_prompt for i in keep], layer)])
        own = para.argmax(dim=1) == torch.arange(len(keep))
        best_para, best_loc = para.max(dim=1).values, loc.max(dim=1).values
        row = {"route_layer": layer, "pooling": "subject", "nearest_is_own": round(float(own.float().mean()), 3)}
        for t in THRESHOLDS:
            row[f"para@{t}"] = round(float((own & (best_para >= t)).float().mean()), 3)
            row[f"loc@{t}"] = round(float((best_loc >= t).float().mean()), 3)
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def format_row(row: dict) -> str:
    cells = "  ".join(f"{t}: {row[f'para@{t}']:.3f}/{row[f'loc@{t}']:.3f}" for t in THRESHOLDS)
    return f"layer {row['route_layer']:>2} {row['pooling']:<9} own-nearest {row['nearest_is_own']:.3f} | paraphrase routed / locality gated in at t = {cells}"


def main(opts: GateOptions, *, as_json: bool) -> int:
    rows = run_gate(opts)
    if as_json:
        print(json.dumps(rows))
    return 0
