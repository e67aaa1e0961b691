"""Locality as users meet it: train T edits (the lifelong protocol), then ask probes built from the
data itself and score what greedy generation answers.

Probe kinds (each edited record gives at most one of each):
  must be edited (the edit's target must be in the output)
    edit             the edit's own prompt
    lower-case       that prompt lower-cased ("which company made uss leedstown (apa-56)?")
    paraphrase       the record's rephrase
    subject-first    "<subject>: <prompt with the subject replaced by 'it'>" ("Ramalinaceae: Which
                     family does it belong to?"), where the subject is in the prompt verbatim and
                     the prompt does not start with it
    same-fact        an unedited record about the same subject with the same true answer but
                     another wording (ZsRE dev: all of its records that share a subject are such)
  must stay (the output must equal the unedited model's, token for token)
    other-subject    the edit's prompt with its subject replaced by another record's subject (one
                     about which nothing was edited: from the data file's unedited records and
                     --other-subjects; none where there is no such subject), where the subject is
                     in the prompt verbatim
    same-subject     an unedited record about the same subject with another true answer
    subject+other-q  another record's question asked about the edit's subject: that record's
                     prompt with its own subject replaced by the edit's, taken from a record whose
                     prompt shares no content word with the edit's (likely another relation; a
                     rule, so a few may still ask the same relation in other words)
    subject+new-q    the same, from a record of the --other-subjects file: a question no edit of the
                     run asks in any wording (at T = 600 every ZsRE dev record is edited, so each
                     subject+other-q probe is worded as some edit, which a rule that compares a
                     prompt with other edits' keys would recognise and no real request would be)
    loc              the record's locality prompt (ZsRE: an NQ question), where it names no edited
                     subject
    loc-subject      the record's locality prompt where it names an edited subject and asks another
                     fact of it (a CounterFact neighbour whose subject the run edits otherwise)
  must be edited, though the data file means it to stay
    loc-edited-fact  the record's locality prompt where it asks a fact the run edited (a CounterFact
                     neighbour whose subject is edited with that relation: "The native language of
                     Jean-Baptiste Say is" beside the edit "Jean-Baptiste Say, a native -> English";
                     app.benchmarks.scope): it belongs to, and must give the answer of, that edit

The edited set: the first T records in file order, except that for every subject with two or more
distinct questions the records asking its last such question are held back (never edited), so
each edited record of that subject has an unedited partner (a same-fact or same-subject probe).
Held-back records are edited only when T needs them.
"""

from __future__ import annotations

import json
import logging
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

from app.benchmarks.datasets import BenchRecord, DataFormat, load_records
from app.benchmarks.quality import train_lifelong
from app.benchmarks.scope import locality_scopes
from app.engine.model_loader import load_model
from app.lemoe.config import LemoeConfig
from app.lemoe.editor import Edit, Generation, LemoeEditor, SamplingParams
from app.lemoe.expert import Expert
from app.lemoe.text import chat_prompt

log = logging.getLogger(__name__)

Subjects = Literal["none", "given"]
Form = Literal["plain", "chat"]  # probes asked as bare prompts, or as the user turn of a chat
EDITED_KINDS = ("edit", "lower-case", "paraphrase", "subject-first", "same-fact", "loc-edited-fact")
KEPT_KINDS = ("other-subject", "same-subject", "subject+other-q", "subject+new-q", "loc", "loc-subject")
KINDS = EDITED_KINDS + KEPT_KINDS
_STOPWORDS = frozenset(
    "the a an of in on at to by for from with and or is was are were be been what which who whom whose when where "
    "how did does do has have had that this it its as name into".split()
)


@dataclass(frozen=True)
class LocalityOptions:
    data: Path
    format: DataFormat
    edits: int
    subjects: Subjects = "none"
    batch_size: int = 16
    max_new_tokens: int = 16
    # Each form asks every probe (the edits are trained once): "plain" as the bare prompt, "chat"
    # as the user's message in the model's chat template (routed on the message, as the server is).
    forms: tuple[Form, ...] = ("plain",)
    kinds: tuple[str, ...] | None = None  # only these probe kinds (None: all); their rows show n = 0 otherwise
    # Another file of the same format whose subjects also fill the other-subject probes (at large T
    # the data file has no unedited subject left: ZsRE dev at T = 600 has none) and whose
    # questions make the subject+new-q probes.
    other_subjects: Path | None = None
    # Where to write every probe's answer, one JSON line each (None: nowhere): what the table
    # counts, to read which probes failed and which edit answered them.
    probes_out: Path | None = None
    model_path: Path | None = None
    cache_dir: Path = Path("lemoe-data/model-cache")
    device: str = "auto"
    config: LemoeConfig = LemoeConfig()


@dataclass(frozen=True)
class Probe:
    kind: str
    record: int  # index (in the file's usable records) of the edited record it belongs to
    prompt: str
    target: str | None = None  # edited probes: what the output must contain


def _key(text: str | None) -> str:
    return " ".join((text or "").lower().split())


def select_edits(records: Sequence[BenchRecord], count: int) -> tuple[list[int], set[int]]:
    """(indices of the records to edit, in file order; indices held back for same-subject probes)."""
    questions: dict[str, list[str]] = {}
    for r in records:
        if r.subject:
            qs = questions.setdefault(_key(r.subject), [])
            if _key(r.prompt) not in qs:
                qs.append(_key(r.prompt))
    held = {
        i
        for i, r in enumerate(records)
        if r.subject and len(questions[_key(r.subject)]) > 1 and _key(r.prompt) == questions[_key(r.subject)][-1]
    }
    chosen = [i for i in range(len(records)) if i not in held][:count]
    if len(chosen) < count:
        chosen = sorted(chosen + sorted(held)[: count - len(chosen)])
    return chosen, held - set(chosen)


def subject_first(prompt: str, subject: str) -> str | None:
    """ "<subject>: <prompt, its subject replaced by 'it'>" (None where the rule does not apply)."""
    if not subject or subject not in prompt or prompt.startswith(subject):
        return None
    rest = prompt.replace(f"{subject}'s", "its", 1) if f"{subject}'s" in prompt else prompt.replace(subject, "it", 1)
    return f"{subject}: {rest}"


def _content_words(text: str, subject: str = "") -> set[str]:
    """`text`'s words that are not stop words, `subject`'s left out (none: "" replaced would
    put a space between every character)."""
    lowered, cut = _key(text), _key(subject)
    if cut:
        lowered = lowered.replace(cut, " ")
    return {w for w in "".join(c if c.isalnum() else " " for c in lowered).split() if w not in _STOPWORDS}


def _question_templates(records: Sequence[BenchRecord]) -> list[tuple[str, str, set[str]]]:
    """Each record's question with its subject cut out ("\\0"), its subject's key and its content
    words (computed once: every edit looks through all of them)."""
    return [
        (t, _key(r.subject), _content_words(t.replace("\0", " ")))
        for r in records
        if r.subject and r.subject.strip() and r.subject.strip() in r.prompt
        for t in [r.prompt.replace(r.subject.strip(), "\0", 1)]
    ]


def _other_question(
    prompt: str, subject: str, templates: Sequence[tuple[str, str, set[str]]], rng: random.Random, edited_prompts: set[str]
) -> str | None:
    """Another question asked about `subject`: a template about another subject that shares no
    content word with `prompt` (likely another relation) and is no edited prompt; None if ten
    draws find none."""
    words, own = _content_words(prompt, subject), _key(subject)
    unlike = [t for t, key, asks in templates if key != own and not words & asks]
    for _ in range(10 if unlike else 0):
        asked = rng.choice(unlike).replace("\0", subject)
        if _key(asked) not in edited_prompts:
            return asked
    return None


def build_probes(
    records: Sequence[BenchRecord],
    edited: Sequence[int],
    other_subjects: Sequence[str] = (),
    other_questions: Sequence[BenchRecord] = (),
) -> list[Probe]:
    """Every probe of every edited record (see the module docstring for the rules); the
    other-subject probes draw on the unedited records' subjects and `other_subjects`, the
    subject+new-q probes on `other_questions` (records of another file)."""
    edited_set = set(edited)
    edited_prompts = {_key(records[i].prompt) for i in edited}
    edited_subjects = {_key(records[i].subject) for i in edited if records[i].subject}
    by_subject: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        if r.subject:
            by_subject.setdefault(_key(r.subject), []).append(i)
    # Other subjects: only those nothing was edited about. An edited one would make the probe ask
    # an edited fact (the same question of an edited subject) or another question of an edited
    # subject, which the same-subject probes already count.
    subjects = [r.subject.strip() for r in records if r.subject and r.subject.strip()] + [s.strip() for s in other_subjects if s.strip()]
    fresh = [s for s in dict.fromkeys(subjects) if _key(s) not in edited_subjects]
    if not fresh:
        log.warning("no unedited subject is left for the other-subject probes: pass --other-subjects FILE")
    templates, new_templates = _question_templates(records), _question_templates(other_questions)
    edited_records = [records[i] for i in edited]
    scopes = locality_scopes(edited_records, edited_records)
    rng, new_rng = random.Random(0), random.Random(1)  # apart: subject+new-q leaves the other probes as they were
    probes: list[Probe] = []
    for i, scope in zip(edited, scopes, strict=True):
        r = records[i]
        subject = (r.subject or "").strip()
        probes += [
            Probe("edit", i, r.prompt, r.target),
            Probe("lower-case", i, r.prompt.lower(), r.target),
            Probe("paraphrase", i, r.rephrase, r.target),
        ]
        reworded = subject_first(r.prompt, subject)
        if reworded is not None:
            probes.append(Probe("subject-first", i, reworded, r.target))
        # Unedited records about the same subject whose question is no edited one.
        group = by_subject.get(_key(subject), []) if subject else []
        edited_questions = {_key(records[j].prompt) for j in group if j in edited_set}
        partners = [j for j in group if j not in edited_set and _key(records[j].prompt) not in edited_questions]
        same_fact = [j for j in partners if r.answer and _key(records[j].answer) == _key(r.answer)]
        other_fact = [j for j in partners if r.answer and records[j].answer and _key(records[j].answer) != _key(r.answer)]
        if same_fact:
            probes.append(Probe("same-fact", i, records[same_fact[0]].prompt, r.target))
        if subject and subject in r.prompt:
            pool = [s for s in fresh if _key(s) != _key(subject) and s not in r.prompt]
            for _ in range(10 if pool else 0):
                other = r.prompt.replace(subject, rng.choice(pool), 1)
                if _key(other) not in edited_prompts:
                    probes.append(Probe("other-subject", i, other))
                    break
        if other_fact:
            probes.append(Probe("same-subject", i, records[other_fact[0]].prompt))
        if subject:
            for kind, source, draw in (("subject+other-q", templates, rng), ("subject+new-q", new_templates, new_rng)):
                asked = _other_question(r.prompt, subject, source, draw, edited_prompts)
                if asked is not None:
                    probes.append(Probe(kind, i, asked))
        if scope.kind == "another edit's fact":
            owner = edited[scope.edit]
            probes.append(Probe("loc-edited-fact", owner, r.loc_prompt, records[owner].target))
        else:
            probes.append(Probe("loc-subject" if scope.kind == "edited subject, other fact" else "loc", i, r.loc_prompt))
    return probes


def generate_all(
    editor: LemoeEditor, prompts: Sequence[str], params: SamplingParams, *, stack=None, batch_size: int = 32, form: Form = "plain"
) -> list[Generation]:
    """Greedy generations in batches of similar length (the same batches for every stack, so a
    prompt that no expert serves gets the unedited model's output bit for bit). In chat form each
    prompt is the user's message in the model's chat template, routed on the message alone, as
    the server's chat completions are."""
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    out: list[Generation | None] = [None] * len(prompts)
    for k in range(0, len(order), batch_size):
        chunk = [prompts[i] for i in order[k : k + batch_size]]
        if form == "chat":
            gens = editor.generate_routed_on([chat_prompt(editor.tokenizer, [("user", p)]) for p in chunk], chunk, params, stack=stack)
        else:
            gens = editor.generate(chunk, params, stack=stack)
        for i, g in zip(order[k : k + batch_size], gens, strict=True):
            out[i] = g
    return out  # type: ignore[return-value]


def score(probes: Sequence[Probe], base: Sequence[Generation | None], after: Sequence[Generation], owner: dict[int, str]) -> dict:
    """Per kind (`base`: the unedited model's answers, needed for kept probes only): probe count,
    score (target in the output / output unchanged), share routed to any expert, and (edited
    kinds) share routed to the expert holding the probe's edit."""
    rows = {}
    for kind in KINDS:
        idx = [k for k, p in enumerate(probes) if p.kind == kind]
        ok = [float(_counts(probes[k], base[k], after[k])) for k in idx]
        own = [float(_reached_own_expert(probes[k], after[k], owner)) for k in idx] if kind in EDITED_KINDS else []
        rows[kind] = {
            "edited": kind in EDITED_KINDS,
            "n": len(idx),
            "score": _mean(ok),
            "routed": _mean([float(after[k].route.expert_index is not None) for k in idx]),
            "own_expert": _mean(own) if own else None,
        }
    return rows


def _counts(probe: Probe, base: Generation | None, got: Generation) -> bool:
    """Whether a probe's answer counts: an edited probe's output holds its target, a kept probe's
    equals the unedited model's (`base`, needed for kept probes only)."""
    if probe.kind in EDITED_KINDS:
        return probe.target in got.text
    assert base is not None
    return got.text == base.text


def _reached_own_expert(probe: Probe, got: Generation, owner: dict[int, str]) -> bool:
    return got.route.expert_name is not None and got.route.expert_name == owner.get(probe.record)


def write_probe_answers(
    path: Path, probes: Sequence[Probe], answers: dict[str, tuple[Sequence[Generation | None], Sequence[Generation]]], owner: dict[int, str]
) -> None:
    """One JSON line per probe and form: what it asked, what came back (and, for kept probes, what
    the unedited model said), whether it counts, and the expert and edit that answered."""
    with Path(path).open("w") as out:
        for form, (base, after) in answers.items():
            for k, probe in enumerate(probes):
                got = after[k]
                edited = probe.kind in EDITED_KINDS
                row = {
                    "form": form,
                    "kind": probe.kind,
                    "record": probe.record,
                    "prompt": probe.prompt,
                    "target": probe.target,
                    "output": got.text,
                    "unedited": None if edited else base[k].text,
                    "ok": _counts(probe, base[k], got),
                    "expert": got.route.expert_name,
                    "own_expert": _reached_own_expert(probe, got, owner),
                    "nearest_edit": got.route.nearest_edit_id if got.route.expert_index is not None else None,
                }
                out.write(json.dumps(row) + "\n")


def _mean(xs: list[float]) -> float | None:
    return round(statistics.fmean(xs), 4) if xs else None


@dataclass
class _Run:
    """What both kinds of locality run start from: the records, which are edited, their probes, the
    model, a fresh editor and the edits as the client sends them."""

    records: list[BenchRecord]
    edited: list[int]
    held: set[int]
    probes: list[Probe]
    loaded: object
    editor: LemoeEditor
    edits: list[Edit]


def _prepare(opts: LocalityOptions) -> _Run:
    if opts.subjects not in ("none", "given"):
        raise ValueError(f"unknown subjects mode {opts.subjects!r}; one of ['given', 'none']")
    if opts.kinds is not None and not set(opts.kinds) <= set(KINDS):
        raise ValueError(f"unknown probe kinds {sorted(set(opts.kinds) - set(KINDS))}; known: {list(KINDS)}")
    records = load_records(opts.data, opts.format)
    if len(records) < opts.edits:
        raise ValueError(f"{opts.data} has {len(records)} usable records; --edits {opts.edits} asked for more")
    edited, held = select_edits(records, opts.edits)
    other_records = [] if opts.other_subjects is None else load_records(opts.other_subjects, opts.format)
    others = [r.subject for r in other_records if r.subject]
    loaded = load_model(opts.model_path, cache_dir=opts.cache_dir, device=opts.device)
    edits = [
        Edit(i, records[i].prompt, records[i].target, subject=records[i].subject if opts.subjects == "given" else None) for i in edited
    ]
    editor = LemoeEditor(loaded.model, loaded.tokenizer, opts.config, device=loaded.device)
    probes = [p for p in build_probes(records, edited, others, other_records) if opts.kinds is None or p.kind in opts.kinds]
    return _Run(records, edited, held, probes, loaded, editor, edits)


def run_locality(opts: LocalityOptions) -> dict:
    run = _prepare(opts)
    edited, held, probes, loaded, editor, edits = run.edited, run.held, run.probes, run.loaded, run.editor, run.edits
    params = SamplingParams(max_new_tokens=opts.max_new_tokens)
    # Kept probes are generated apart from edited ones, in the same batches before and after
    # editing; the unedited model's answers to edited probes are not needed.
    kept = [k for k, p in enumerate(probes) if p.kind in KEPT_KINDS]
    edited_probes = [k for k, p in enumerate(probes) if p.kind not in KEPT_KINDS]
    log.info("%d probes (%d must stay); generating those with the unedited model", len(probes), len(kept))
    kept_prompts = [probes[k].prompt for k in kept]
    base_kept = {form: generate_all(editor, kept_prompts, params, stack=(), form=form) for form in opts.forms}
    trained = train_lifelong(editor, edits, batch_size=opts.batch_size)
    log.info("generating with %d experts", trained["experts"])
    started = time.perf_counter()
    scores = {}
    answers: dict[str, tuple[list, list]] = {}
    for form in opts.forms:
        after: list = [None] * len(probes)
        base: list = [None] * len(probes)
        for group, gens in (
            (kept, generate_all(editor, kept_prompts, params, form=form)),
            (edited_probes, generate_all(editor, [probes[k].prompt for k in edited_probes], params, form=form)),
        ):
            for k, g in zip(group, gens, strict=True):
                after[k] = g
        for k, g in zip(kept, base_kept[form], strict=True):
            base[k] = g
        scores[form] = score(probes, base, after, trained["owner"])
        answers[form] = (base, after)
    if opts.probes_out is not None:
        write_probe_answers(opts.probes_out, probes, answers, trained["owner"])
    return {
        "data": str(opts.data),
        "format": opts.format,
        "model": loaded.name,
        "edits": len(edited),
        "subjects": opts.subjects,
        "experts": trained["experts"],
        "subject_keyed_edits": trained["subject_keyed_edits"],
        "subjects_inferred": trained["subjects_inferred"],
        "held_back": len(held),
        "max_new_tokens": opts.max_new_tokens,
        "forms": scores,
        "probes": scores[opts.forms[0]],
        "train_s": trained["train_s"],
        "s_per_edit": trained["s_per_edit"],
        "cpu_s_per_edit": trained["cpu_s_per_edit"],
        "generate_s": round(time.perf_counter() - started, 1),
        "torch_threads": torch.get_num_threads(),
        "config": asdict(opts.config),
    }


_ROUTING_CHUNK = 256


def run_routing(opts: LocalityOptions, relation_thresholds: Sequence[float | None], span_thresholds: Sequence[float | None] = ()) -> dict:
    """Routing alone (no training, no generation): the edits are planned and keyed as for training
    (subjects inferred where none is sent), and each probe's route is read once per relation
    threshold or, given `span_thresholds`, once per span threshold at the first relation
    threshold. An edited probe counts when it reaches its own edit's expert, a kept one when it
    reaches none (it then gets the unedited model's output bit for bit)."""
    run = _prepare(opts)
    records, edited, held, probes, loaded, editor, edits = run.records, run.edited, run.held, run.probes, run.loaded, run.editor, run.edits
    started = time.perf_counter()
    edits, inferred = editor.complete_subjects(edits)
    infer_s = time.perf_counter() - started
    labelled = [
        (inferred[e.edit_id].text, records[e.edit_id].subject) for e in edits if e.edit_id in inferred and records[e.edit_id].subject
    ]
    inferred_exact = _mean([float(a.strip().lower() == b.strip().lower()) for a, b in labelled])
    stack, owner = [], {}
    for k, batch in enumerate(editor.plan(edits, batch_size=opts.batch_size)):
        name = f"expert-{k:04d}"
        # An untrained expert: routing never reads an expert's weights.
        stack.append(editor.keyed_entry(name, Expert(editor.hidden_size, 1), batch, {}))
        owner.update({e.edit_id: name for e in batch})
    prompts = [p.prompt for p in probes]
    varied = "span" if span_thresholds else "relation"
    thresholds = span_thresholds or relation_thresholds
    decided: dict[float | None, list] = {t: [] for t in thresholds}
    # In chunks: the subject match compares every prompt token with every subject key, and at
    # T = 10,000 that is tens of gigabytes for all probes at once.
    for start in range(0, len(prompts), _ROUTING_CHUNK):
        chunk = prompts[start : start + _ROUTING_CHUNK]
        read = editor.read_routes(chunk)
        for threshold in thresholds:
            if editor.router.subject is not None:
                editor.router.subject.relation_threshold = relation_thresholds[0] if span_thresholds else threshold
                if span_thresholds:
                    editor.router.subject.span_threshold = threshold
            decided[threshold] += editor.router.route(
                read.queries, stack, read.states, read.mask, read.relation_weights, subject_tokens=read.tokens
            )
    rows = {}
    for threshold in thresholds:
        decisions = decided[threshold]
        row = {}
        for kind in KINDS:
            idx = [k for k, p in enumerate(probes) if p.kind == kind]
            if kind in EDITED_KINDS:
                ok = [float(decisions[k].expert_name == owner[probes[k].record]) for k in idx]
            else:
                ok = [float(decisions[k].expert_index is None) for k in idx]
            row[kind] = {"edited": kind in EDITED_KINDS, "n": len(idx), "score": _mean(ok)}
        rows["none" if threshold is None else str(threshold)] = row
    return {
        "data": str(opts.data),
        "format": opts.format,
        "model": loaded.name,
        "edits": len(edited),
        "subjects": opts.subjects,
        "subjects_inferred": len(inferred),
        "inferred_exact": inferred_exact,
        "infer_s_per_edit": round(infer_s / max(len(inferred), 1), 3) if inferred else None,
        "experts": len(stack),
        "held_back": len(held),
        f"{varied}_thresholds": rows,
        **({"relation_threshold": relation_thresholds[0]} if span_thresholds else {}),
    }


def format_routing_table(result: dict) -> str:
    varied, label = ("span_thresholds", "span") if "span_thresholds" in result else ("relation_thresholds", "rel")
    columns = result[varied]
    thresholds = list(columns)
    lines = [
        f"{result['model']} on {Path(result['data']).name} ({result['format']}), T={result['edits']}, "
        f"subjects={result['subjects']} ({result['subjects_inferred']} inferred, {_share(result['inferred_exact'])} of them "
        f"equal to the data's subject, {_share(result['infer_s_per_edit'])} s each), {result['experts']} experts, routing only: "
        "share of edited probes reaching their own expert / of kept probes reaching none",
        f"  {'probe':<15} {'must':<10} {'n':>5}  " + "  ".join(f"{label + ' ' + t:>9}" for t in thresholds),
    ]
    first = columns[thresholds[0]]
    for kind, row in first.items():
        must = "be edited" if row["edited"] else "stay"
        cells = []
        for t in thresholds:
            score = columns[t][kind]["score"]
            cells.append(f"{'–' if score is None else f'{score:.3f}':>9}")
        lines.append(f"  {kind:<15} {must:<10} {row['n']:>5}  " + "  ".join(cells))
    return "\n".join(lines)


def _share(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def main_routing(
    opts: LocalityOptions, relation_thresholds: Sequence[float | None], span_thresholds: Sequence[float | None] = (), *, as_json: bool
) -> int:
    result = run_routing(opts, relation_thresholds, span_thresholds)
    print(format_routing_table(result))
    if as_json:
        print(json.dumps(result))
    return 0


def format_table(result: dict) -> str:
    def cell(x) -> str:
        return "–" if x is None else f"{x:.3f}"

    lines = [
        f"{result['model']} on {Path(result['data']).name} ({result['format']}), T={result['edits']}, "
        f"subjects={result['subjects']}, {result['experts']} experts, {result['subject_keyed_edits']} edits with a subject key "
        f"({result['subjects_inferred']} inferred), "
        f"{result['held_back']} records held back for same-subject probes, greedy {result['max_new_tokens']} tokens",
    ]
    for form, rows in result["forms"].items():
        lines.append(f"  {form + ' form':<15} {'must':<10} {'n':>5}  {'score':>6}  {'reached an expert':>17}  {'its own expert':>14}")
        for kind, row in rows.items():
            must = "be edited" if row["edited"] else "stay"
            lines.append(
                f"  {kind:<15} {must:<10} {row['n']:>5}  {cell(row['score']):>6}  {cell(row['routed']):>17}  {cell(row['own_expert']):>14}"
            )
    lines.append(f"  training {result['train_s']} s ({result['s_per_edit']} s per edit), generation after editing {result['generate_s']} s")
    return "\n".join(lines)


def main(opts: LocalityOptions, *, as_json: bool) -> int:
    result = run_locality(opts)
    print(format_table(result))
    if as_json:
        print(json.dumps(result))
    return 0
