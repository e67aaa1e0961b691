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
from app.lemoe.editor import Edit, LemoeEditor
from app.lemoe.layer import decoder_layers

THRESHOLDS = (0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8)


@dataclass(frozen=True)
class GateOptions:
    data: Path
    format: DataFormat
    edits: int
    layers: tuple[int, ...] = ()
    poolings: tuple[str, ...] = ("mean", "last", "mean_last")  # also "subject": see run_subject_keys
    subject_floors: tuple[float, ...] = ()  # sentence floors to try with subject keys (default: the editor's)
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
            config = replace(LemoeConfig(), layer=max(layer, default_layer), route_layer=layer, pooling=pooling, subject_keys=False)
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
    """Subject keys (the serving code's `SubjectKeys`): the anchor is the edit prompt's state at
    its subject's last token on the input of `layer`, a prompt's score its best token's."""
    records = [r for r in load_records(opts.data, opts.format, limit=opts.edits) if r.subject]
    loaded = load_model(opts.model_path, cache_dir=opts.cache_dir, device=opts.device)
    default_layer = LemoeConfig().resolved_layer(len(decoder_layers(loaded.model)))
    rows = []
    for layer in layers:
        model = load_model(opts.model_path, cache_dir=opts.cache_dir, device=opts.device).model
        config = replace(LemoeConfig(), layer=max(layer, default_layer), subject_layer=layer)
        editor = LemoeEditor(model, loaded.tokenizer, config, device=loaded.device)
        keys = editor.subject_anchors([Edit(i, r.prompt, r.target, subject=r.subject) for i, r in enumerate(records)]).subject
        keep = ~torch.isnan(keys).any(dim=1)  # no key: the subject is not in the prompt
        keys = keys[keep]
        kept = [r for r, k in zip(records, keep.tolist(), strict=True) if k]

        def best_scores(texts: list[str]) -> torch.Tensor:
            states, mask = editor.subject_states(texts)
            return editor.router.subject.scores(states, mask, keys).scores

        para, loc = best_scores([r.rephrase for r in kept]), best_scores([r.loc_prompt for r in kept])
        own = para.argmax(dim=1) == torch.arange(len(kept), device=para.device)
        # The serving rule also asks for some sentence similarity (the floor): measured beside.
        norm = editor.router.normalise
        anchors = norm(editor.queries([r.prompt for r in kept]))
        para_sent = norm(editor.queries([r.rephrase for r in kept])) @ anchors.T
        loc_sent = norm(editor.queries([r.loc_prompt for r in kept])) @ anchors.T
        for floor in (None, *(opts.subject_floors or (config.subject_sentence_floor,))):
            label = "subject" if floor is None else f"subject+sentence>={floor}"
            row = {"route_layer": layer, "pooling": label, "nearest_is_own": round(float(own.float().mean()), 3)}
            for t in THRESHOLDS:
                para_in, loc_in = para >= t, loc >= t
                if floor is not None:
                    para_in, loc_in = para_in & (para_sent >= floor), loc_in & (loc_sent >= floor)
                # Routed right: its own edit may fire and is the nearest of those that may.
                pick = para_sent.masked_fill(~para_in, -2.0).argmax(dim=1) if floor is not None else para.argmax(dim=1)
                right = para_in.any(dim=1) & (pick == torch.arange(len(kept), device=pick.device))
                row[f"para@{t}"] = round(float(right.float().mean()), 3)
                row[f"loc@{t}"] = round(float(loc_in.any(dim=1).float().mean()), 3)
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


def format_row(row: dict) -> str:
    cells = "  ".join(f"{t}: {row[f'para@{t}']:.3f}/{row[f'loc@{t}']:.3f}" for t in THRESHOLDS)
    head = f"layer {row['route_layer']:>2} {row['pooling']:<9} own-nearest {row['nearest_is_own']:.3f}"
    return f"{head} | paraphrase routed / locality gated in at t = {cells}"


def main(opts: GateOptions, *, as_json: bool) -> int:
    rows = run_gate(opts)
    if as_json:
        print(json.dumps(rows))
    return 0
