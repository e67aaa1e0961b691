"""The check before an expert goes live: through the live stack with and without the candidate,
does it answer its own edits, leave a fixed locality sample alone and keep the answers of the live
edits nearest to it? Pure ML (no SQL): the trainer decides what the figures mean.

Cost is bounded. Its own edits are read in one teacher-forced pass: greedy decoding starts with
the target exactly when every target token is the model's top choice after the ones before it,
so that pass answers "does greedy generation give the target" without generating. Other prompts
are generated only where the candidate changes their route. Elsewhere outputs are equal by
construction, not by chance: a prompt routed to the same expert (or to none) under both stacks
runs exactly the same computation, since the adaptor adds an expert's output only to the rows
routed to it. What routing reads of the fixed locality sample does not depend on the stack: it is
read once per editor.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass

import torch

from app.lemoe.editor import LemoeEditor, RouteInputs
from app.lemoe.expert import ExpertEntry
from app.lemoe.reference import LOCALITY_PROMPTS
from app.lemoe.routing import RouteDecision, anchor_edit_ids
from app.lemoe.text import encode_pair
from app.lemoe.types import Edit, SamplingParams

EXTRA_TOKENS = 3  # a live edit's answer is compared on its target's length and this many more tokens
LOCALITY_TOKENS = 8  # a locality prompt has no target: this many tokens are compared

_read_locality: weakref.WeakKeyDictionary[LemoeEditor, tuple[tuple[str, ...], RouteInputs]] = weakref.WeakKeyDictionary()
_read_lock = threading.Lock()


@dataclass(frozen=True)
class ExpertCheck:
    """The figures of one check; each rate is 1.0 when its sample is empty."""

    edits: int
    edits_answered: int
    edit_rate: float
    missed_edit_ids: list[int]
    locality: int
    locality_kept: int
    locality_rate: float
    others: int
    others_kept: int
    others_rate: float
    changed_edit_ids: list[int]  # live edits whose answer the candidate changed
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def _rate(kept: int, total: int) -> float:
    return round(kept / total, 4) if total else 1.0


def target_tokens(editor: LemoeEditor, prompt: str, target: str) -> int:
    return len(encode_pair(editor.tokenizer, prompt, target).target_ids)


def nearest_live_edits(
    editor: LemoeEditor, candidate: ExpertEntry, *, limit: int, exclude: Collection[int] = (), without: Collection[str] = ()
) -> list[int]:
    """Up to `limit` edit ids of the live stack (less the experts named in `without`) whose
    anchors are nearest (centred cosine) to one of the candidate's: the live edits it is most
    likely to take over. `exclude`: edit ids left out (the candidate's own, those it supersedes)."""
    stack = [e for e in editor.stack if e.name != candidate.name and e.name not in without]
    if limit <= 0 or not stack:
        return []
    anchors = torch.cat([e.anchors for e in stack]).to(candidate.anchors.device)
    sims = editor.router.normalise(anchors) @ editor.router.normalise(candidate.anchors).T
    nearest = sims.max(dim=1).values
    ids = anchor_edit_ids(stack)
    chosen: list[int] = []
    for k in torch.argsort(nearest, descending=True).tolist():
        edit_id = ids[k]
        if edit_id is None or edit_id in exclude or edit_id in chosen:
            continue
        chosen.append(edit_id)
        if len(chosen) == limit:
            break
    return chosen


def check_candidate(
    editor: LemoeEditor,
    candidate: ExpertEntry,
    edits: Sequence[Edit],
    others: Sequence[Edit],
    *,
    locality_prompts: Sequence[str] = LOCALITY_PROMPTS,
    extra_tokens: int = EXTRA_TOKENS,
    without: Collection[str] = (),
) -> ExpertCheck:
    """Measure `candidate` (trained on `edits`, not live) against the live stack: `before` is the
    stack as it serves, `after` the same less the experts named in `without` (one it replaces)
    plus the candidate, newest. `others`: live edits whose answers must not change."""
    started = time.perf_counter()
    before = tuple(editor.stack)
    after = tuple(e for e in before if e.name not in without and e.name != candidate.name) + (editor.prepared(candidate),)

    # Its own edits: would greedy decoding through the stack with it start with their targets?
    forced = editor.teacher_forced([e.prompt for e in edits], [e.target for e in edits], stack=after) if edits else []
    missed = [e.edit_id for e, (predicted, target, _) in zip(edits, forced, strict=True) if predicted != target]

    # The locality sample and the other live edits: equal outputs with and without it.
    changed = _changed(
        editor, list(locality_prompts), [LOCALITY_TOKENS] * len(locality_prompts), before, after, _locality(editor, locality_prompts)
    )
    tokens = [target_tokens(editor, e.prompt, e.target) + extra_tokens for e in others]
    changed += [len(locality_prompts) + i for i in _changed(editor, [e.prompt for e in others], tokens, before, after)]
    locality_changed = sum(1 for i in changed if i < len(locality_prompts))
    changed_ids = [others[i - len(locality_prompts)].edit_id for i in changed if i >= len(locality_prompts)]
    return ExpertCheck(
        edits=len(edits),
        edits_answered=len(edits) - len(missed),
        edit_rate=_rate(len(edits) - len(missed), len(edits)),
        missed_edit_ids=missed,
        locality=len(locality_prompts),
        locality_kept=len(locality_prompts) - locality_changed,
        locality_rate=_rate(len(locality_prompts) - locality_changed, len(locality_prompts)),
        others=len(others),
        others_kept=len(others) - len(changed_ids),
        others_rate=_rate(len(others) - len(changed_ids), len(others)),
        changed_edit_ids=changed_ids,
        seconds=round(time.perf_counter() - started, 3),
    )


def _locality(editor: LemoeEditor, prompts: Sequence[str]) -> RouteInputs | None:
    """What routing reads of the locality sample, read once per editor (None: no prompts)."""
    if not prompts:
        return None
    key = tuple(prompts)
    with _read_lock:
        cached = _read_locality.get(editor)
        if cached is not None and cached[0] == key:
            return cached[1]
    read = editor.read_routes(list(prompts))
    with _read_lock:
        _read_locality[editor] = (key, read)
    return read


def _changed(
    editor: LemoeEditor,
    prompts: list[str],
    tokens: list[int],
    before: tuple[ExpertEntry, ...],
    after: tuple[ExpertEntry, ...],
    read: RouteInputs | None = None,
) -> list[int]:
    """Indices of the prompts whose greedy output differs between the two stacks. Only those
    routed differently are generated (twice); the others cannot differ."""
    if not prompts:
        return []
    routes_before, routes_after = editor.route_under(read if read is not None else prompts, [before, after])
    moved = [i for i, (b, a) in enumerate(zip(routes_before, routes_after, strict=True)) if b.expert_name != a.expert_name]
    if not moved:
        return []
    subset = [prompts[i] for i in moved]
    lengths = [tokens[i] for i in moved]
    old = _generate(editor, subset, lengths, before, forced=[routes_before[i] for i in moved])
    new = _generate(editor, subset, lengths, after, forced=[routes_after[i] for i in moved])
    return [i for i, a, b in zip(moved, old, new, strict=True) if a != b]


def _generate(
    editor: LemoeEditor,
    prompts: list[str],
    lengths: list[int],
    stack: tuple[ExpertEntry, ...],
    *,
    forced: list[RouteDecision],
    batch_size: int = 16,
) -> list[str]:
    """Greedy text of each prompt on the route given, batched by similar length: a batch generates
    as many tokens as its longest needs (the same batches, so comparable outputs, for the same
    prompts and lengths under another stack)."""
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    texts = [""] * len(prompts)
    for k in range(0, len(order), batch_size):
        chunk = order[k : k + batch_size]
        params = SamplingParams(max_new_tokens=max(lengths[i] for i in chunk))
        generations = editor.generate([prompts[i] for i in chunk], params, stack=stack, forced=[forced[i] for i in chunk])
        for i, g in zip(chunk, generations, strict=True):
            texts[i] = g.text
    return texts
