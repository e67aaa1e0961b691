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
    return PairScores(
        [unchanged_share(b[0], a[0]) for b, a in zip(before, after, strict=True)], [a[2] for a in after]
    )


def exact_match(editor: LemoeEditor, prompts: Sequence[str], targets: Sequence[str], *, batch_size: int = 16, **kw) -> list[float]:
    """1.0 where greedy generation of the target's length reproduces the target exactly."""
    scores: list[float] = []
    for i in range(0, len(prompts), batch_size):
        chunk_p, chunk_t = prompts[i:i + batch_size], targets[i:i + batch_size]
        n_tokens = max(len(encode_pair(editor.tokenizer, p, t).target_ids) for p, t in zip(chunk_p, chunk_t))
        gens = editor.generate(chunk_p, SamplingParams(max_new_tokens=n_tokens), **kw)
        for g, t in zip(gens, chunk_t, strict=True):
            scores.append(float(g.text.strip().startswith(t.strip()) and _whole(g.text.strip(), t.strip())))
    return scores


def _whole(text: str, target: str) -> bool:
    """The target is not merely a prefix of a longer word ("Paris" in "Parisian")."""
    rest = text[len(target):]
    return not rest or not rest[0].isalnum()
