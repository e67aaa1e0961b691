"""Which locality prompts a run's own edits put in scope.

A benchmark's locality prompt is meant to ask something no edit touches. In a long run that stops
being true: CounterFact's locality prompts are neighbours (another subject, same relation, same true
answer), and at T = 10,000 about one in thirteen names a subject that the run itself edits with that
very fact ("The native language of Jean-Baptiste Say is" after the edit "Jean-Baptiste Say, a
native -> English"). Answering such a prompt with the other edit's answer is the edit working, not
a locality failure; the benchmark scores those apart instead of counting them against Loc.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

from app.benchmarks.datasets import BenchRecord

ScopeKind = Literal["another edit's fact", "edited subject, other fact", "no edited subject"]
SCOPE_KINDS: tuple[ScopeKind, ...] = ("another edit's fact", "edited subject, other fact", "no edited subject")

_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class LocalityScope:
    kind: ScopeKind
    subject: str | None = None  # the edited subject the prompt names (the longest, where several)
    edit: int | None = None  # for "another edit's fact": the latest such edit (its index in `edited`)


# Not when the words are part of a longer name: "Florence" in "Florence Price", "London" in "New
# London County", "Canada" in "Trans-Canada Highway", "Law & Order" in "Law & Order: LA". A
# capitalised word before the subject continues a name unless it starts the sentence as a function
# word does ("The", "In", "What").
_CONTINUED = re.compile(r"\s+[A-Z0-9]|:|-\w")
_PREVIOUS_WORD = re.compile(r"(?:^|\s)([\w.'&-]+)\s$")
_SENTENCE_STARTS = frozenset("A An At By For From How In Of On The To What When Where Which Who Whom Whose Why".split())


def _continues_a_name(before: str, after: str) -> bool:
    if _CONTINUED.match(after) or re.search(r"\w-$", before):
        return True
    previous = _PREVIOUS_WORD.search(before)
    if previous is None or not previous.group(1)[0].isupper():
        return False
    return not (previous.start(1) == 0 and previous.group(1) in _SENTENCE_STARTS)


def _names(prompt: str, subject: str) -> bool:
    for match in re.finditer(rf"(?<!\w){re.escape(subject)}(?!\w)", prompt):
        if not _continues_a_name(prompt[: match.start()], prompt[match.end() :]):
            return True
    return False


def locality_scopes(edited: list[BenchRecord], probed: list[BenchRecord]) -> list[LocalityScope]:
    """For each of `probed`'s locality prompts: whether it names a subject of the `edited` records
    (whole words, as written), and whether it asks that subject's edited fact, i.e. one of its edits
    has the prompt's expected answer as its true answer (CounterFact neighbours share relation and
    true answer, so the same answer stands for the same relation)."""
    edits_of: dict[str, list[int]] = defaultdict(list)
    for k, record in enumerate(edited):
        if record.subject and _WORD.search(record.subject):
            edits_of[record.subject].append(k)
    by_first_word: dict[str, list[str]] = defaultdict(list)
    for subject in edits_of:
        by_first_word[_WORD.search(subject).group()].append(subject)

    scopes = []
    for record in probed:
        # In the prompt's word order (not a set's, which varies with the hash seed): of two named
        # subjects equally long, the first is taken on every run.
        words = dict.fromkeys(_WORD.findall(record.loc_prompt))
        named = [s for w in words for s in by_first_word.get(w, ()) if _names(record.loc_prompt, s)]
        if not named:
            scopes.append(LocalityScope("no edited subject"))
            continue
        subject = max(named, key=len)
        same_fact = [k for k in edits_of[subject] if edited[k].answer is not None and edited[k].answer == record.loc_answer]
        if same_fact:
            scopes.append(LocalityScope("another edit's fact", subject, same_fact[-1]))
        else:
            scopes.append(LocalityScope("edited subject, other fact", subject))
    return scopes
