"""Locality prompts that a run's own edits put in scope (app.benchmarks.scope)."""

from __future__ import annotations

from app.benchmarks.datasets import BenchRecord
from app.benchmarks.scope import LocalityScope, locality_scopes


def record(prompt: str, target: str, subject: str, answer: str, loc_prompt: str = "Nothing here", loc_answer: str = "x") -> BenchRecord:
    return BenchRecord(prompt, target, prompt, loc_prompt, loc_answer, subject=subject, answer=answer)


SAY = record("Jean-Baptiste Say, a native", "English", "Jean-Baptiste Say", "French")
SEOUL_1 = record("Seoul is a twin city of", "Athens", "Seoul", "Tokyo")
SEOUL_2 = record("Seoul is a twin city of", "Oslo", "Seoul", "Tokyo")
LAW = record("Law & Order debuted on", "HBO", "Law & Order", "NBC")


def probe(loc_prompt: str, loc_answer: str) -> BenchRecord:
    return record("The capital of Peru is", "Oslo", "Peru", "Lima", loc_prompt, loc_answer)


def test_a_prompt_asking_an_edited_subjects_edited_fact_is_in_that_edits_scope():
    scopes = locality_scopes([SAY], [probe("The native language of Jean-Baptiste Say is", "French")])
    assert scopes == [LocalityScope("another edit's fact", "Jean-Baptiste Say", 0)]


def test_the_latest_edit_of_a_fact_gives_the_expected_answer():
    scopes = locality_scopes([SEOUL_1, SEOUL_2, SAY], [probe("The twin city of Seoul is", "Tokyo")])
    assert scopes[0].edit == 1  # Oslo


def test_another_answer_means_another_question_about_the_edited_subject():
    scopes = locality_scopes([SAY], [probe("Jean-Baptiste Say was born in", "Lyon")])
    assert scopes == [LocalityScope("edited subject, other fact", "Jean-Baptiste Say")]


def test_subjects_match_whole_words_only_and_the_longest_wins():
    say_jr = record("Jean-Baptiste Say Jr, a native", "Dutch", "Jean-Baptiste Say Jr", "French")
    seoulite = probe("Seoulites speak", "Korean")
    scopes = locality_scopes([SAY, say_jr, SEOUL_1], [probe("The native language of Jean-Baptiste Say Jr is", "French"), seoulite])
    assert scopes[0] == LocalityScope("another edit's fact", "Jean-Baptiste Say Jr", 1)
    assert scopes[1] == LocalityScope("no edited subject")


def test_words_of_a_longer_name_do_not_name_the_edited_subject():
    edited = [LAW, record("London is in", "Peru", "London", "England"), SAY]
    probes = [
        probe("Law & Order: LA premiered on", "NBC"),
        probe("New London County, which is named for", "England"),
        probe("The language of London River is", "English"),
        probe("Kevin Jean-Baptiste Say was born in", "Lyon"),
    ]
    assert [s.kind for s in locality_scopes(edited, probes)] == ["no edited subject"] * 4
    # A sentence's first word is not part of the name; the possessive still names the subject.
    probes = [probe("In London, they speak", "English"), probe("London's twin city is", "Berlin")]
    assert [s.kind for s in locality_scopes(edited, probes)] == ["edited subject, other fact"] * 2


def test_records_without_a_subject_or_answer_put_nothing_in_scope():
    no_subject = BenchRecord("Who wrote it?", "Tolstoy", "Who wrote it?", "loc", "ans")
    no_answer = record("Seoul is a twin city of", "Athens", "Seoul", None)  # type: ignore[arg-type]
    scopes = locality_scopes([no_subject, no_answer], [probe("Who wrote it? Seoul", "Tokyo")])
    assert scopes == [LocalityScope("edited subject, other fact", "Seoul")]
