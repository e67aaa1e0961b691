"""Editing metrics as EasyEdit/WISE define them (teacher-forced), plus greedy exact match."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from app.lemoe.editor import LemoeEditor, SamplingParams
from app.lemoe.routing import RouteDecision
from app.lemoe.text import encode_pair


def token_accuracy(predicted: Sequence[int], target: Sequence[int]) -> float:
    """Share of target tokens the model predicts (teacher-forced), as Rel/Gen define it."""
    if not target:
        raise ValueError("empty target")
    return sum(int(p == t) for p, t in zip(predicted, target, strict=True)) / len(target)


def unchanged_share(before: Sequence[int], after: Sequence[int]) -> float:
    """Share of next-token predictions unchanged by editing, as Loc defines it."""
    if not before:
        raise ValueError("empty prediction")
    return sum(int(a == b) for a, b in zip(before, after, strict=True)) / len(before)


@dataclass(frozen=True)
class PairScores:
    accuracy: list[float]
    routes: list[RouteDecision]


def teacher_forced_scores(editor: LemoeEditor, prompts: Sequence[str], targets: Sequence[str], **kw) -> PairScores:
    rows = editor.teacher_forced(prompts, targets, **kw)
    return PairScores([token_accuracy(p, t) for p, t, _ in rows], [r for _, _, r in rows])


def locality_scores(editor: LemoeEditor, prompts: Sequence[str], answers: Sequence[str], **kw) -> PairScores:
    before = editor.teacher_forced(prompts, answers, stack=())
    after = editor.teacher_forced(prompts, answers, **kw)
    return PairScores([unchanged_share(b[0], a[0]) for b, a in zip(before, after, strict=True)], [a[2] for a in after])


def exact_match(editor: LemoeEditor, prompts: Sequence[str], targets: Sequence[str], *, batch_size: int = 32, **kw) -> list[float]:
    """1.0 where greedy generation of the target's length reproduces the target exactly."""
    lengths = [len(encode_pair(editor.tokenizer, p, t).target_ids) for p, t in zip(prompts, targets, strict=True)]
    # Batches of similar target length: each batch generates only as long as its longest target.
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    scores = [0.0] * len(prompts)
    for k in range(0, len(order), batch_size):
        chunk = order[k : k + batch_size]
        params = SamplingParams(max_new_tokens=max(lengths[i] for i in chunk))
        gens = editor.generate([prompts[i] for i in chunk], params, **kw)
        for i, g in zip(chunk, gens, strict=True):
            text, target = g.text.strip(), targets[i].strip()
            scores[i] = float(text.startswith(target) and _whole(text, target))
    return scores


def _whole(text: str, target: str) -> bool:
    """The target is not merely a prefix of a longer word ("Paris" in "Parisian")."""
    rest = text[len(target) :]
    return not rest or not rest[0].isalnum()
