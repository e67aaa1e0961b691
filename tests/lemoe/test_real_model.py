"""Behavioural tests on the real bundled SmolLM2-135M-Instruct (CPU, about a minute)."""

from __future__ import annotations

import pytest

from app.engine.model_loader import load_model
from app.lemoe.config import LemoeConfig
from app.lemoe.editor import Edit, LemoeEditor, SamplingParams
from app.lemoe.expert import Expert
from app.lemoe.subjects import infer_subjects, rare_word_test
from app.lemoe.text import encode_pair
from tests.real_model import MODEL_CACHE, counterfact_records, zsre_records

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def real():
    return load_model(None, cache_dir=MODEL_CACHE, device="cpu")


def test_target_is_tokenised_as_the_continuation_of_its_prompt(real):
    tok = real.tokenizer
    pair = encode_pair(tok, "The capital of France is", "Paris")
    assert pair.target_ids == tok(" Paris", add_special_tokens=False)["input_ids"]
    assert pair.prompt_ids + pair.target_ids == tok("The capital of France is Paris")["input_ids"]
    # Tokenised on its own ("Paris" without the space) it would be other tokens: the GRACE bug.
    assert pair.target_ids != tok("Paris", add_special_tokens=False)["input_ids"]


def test_editing_real_facts_changes_them_and_nothing_else(real):
    records = zsre_records(0, 6)
    editor = LemoeEditor(real.model, real.tokenizer, LemoeConfig())
    unrelated = [r["loc"] for r in records] + ["Write a haiku about the sea.", "What is 2 + 2?"]
    params = SamplingParams(max_new_tokens=12)
    base = [g.text for g in editor.generate(unrelated, params, stack=())]

    edits = [Edit(i, r["src"], r["alt"]) for i, r in enumerate(records)]
    trained = editor.train(edits, name="e0")
    editor.add_expert(trained.entry)

    answers = editor.generate([r["src"] for r in records], params)
    assert all(g.route.expert_name == "e0" for g in answers)
    assert [g.text.strip().startswith(r["alt"]) for g, r in zip(answers, records)].count(True) >= 5

    paraphrased = editor.generate([r["rephrase"] for r in records], params)
    assert [g.text.strip().startswith(r["alt"]) for g, r in zip(paraphrased, records)].count(True) >= 3

    after = editor.generate(unrelated, params)
    assert all(g.route.expert_name is None for g in after)
    assert [g.text for g in after] == base


def test_subject_keys_leave_near_neighbours_to_the_base_model(real):
    records = counterfact_records(0, 8)
    # Subject keys alone: relation keys shut most of these paraphrases out (test_relation_keys_*).
    editor = LemoeEditor(real.model, real.tokenizer, LemoeConfig(relation_threshold=None))
    params = SamplingParams(max_new_tokens=6)
    neighbours = [r["locality_prompt"] for r in records]
    base = [g.text for g in editor.generate(neighbours, params, stack=())]

    edits = [Edit(i, r["prompt"], r["target_new"], subject=r["subject"]) for i, r in enumerate(records)]
    trained = editor.train(edits, name="cf")
    assert trained.meta["subject_keyed_edits"] == len(records)
    editor.add_expert(trained.entry)

    answers = editor.generate([r["prompt"] for r in records], params)
    assert all(g.route.expert_name == "cf" for g in answers)
    assert [g.text.strip().startswith(r["target_new"]) for g, r in zip(answers, records)].count(True) >= 6
    paraphrased = editor.generate([r["rephrase_prompt"] for r in records], params)
    # By wording alone (gate 0.55) 3 of these 8 paraphrases would route; the three that do not
    # here hide the subject behind an unrelated sentence, below the keys' sentence floor.
    assert [g.route.expert_name for g in paraphrased].count("cf") >= 5

    after = editor.generate(neighbours, params)
    kept = [g.route.expert_name is None and g.text == b for g, b in zip(after, base)]
    assert kept.count(True) >= 7, [(g.prompt, g.route) for g in after]
    # The same expert keyed by wording alone lets the neighbours in: the subject keys are what shut them out.
    trained.entry.subject_anchors = None
    assert sum(d.expert_index is not None for d in editor.router.route(editor.queries(neighbours), [trained.entry])) >= 3


def test_a_rephrase_that_starts_with_its_subject_is_served_in_any_case(real):
    edit = Edit(1, "The capital of France is", "Lyon", subject="France")
    params = SamplingParams(max_new_tokens=6)
    first = ["France's capital city is", "france's capital city is"]
    editor = LemoeEditor(real.model, real.tokenizer, LemoeConfig())
    editor.add_expert(editor.train([edit], name="fr").entry)
    for g in editor.generate(first, params):
        assert g.route.expert_name == "fr" and g.route.subject_score >= 0.75, g
        assert "Lyon" in g.text, g
    [other] = editor.generate(["Germany's capital city is"], params)
    assert other.route.expert_index is None
    # Reading the bare prompt (no context, case kept) the subject-first rephrase never matches.
    bare = LemoeEditor(real.model, real.tokenizer, LemoeConfig(subject_context="", subject_lowercase=False))
    bare.add_expert(bare.train([edit], name="fr").entry)
    assert all(g.route.expert_index is None for g in bare.generate(first, params))


def test_the_model_names_the_labelled_subject_of_most_prompts(real):
    records = zsre_records(0, 12)
    found = infer_subjects(real.model, real.tokenizer, [r["src"] for r in records], real.model.device)
    assert all(f is not None and f.text in r["src"] for f, r in zip(found, records))
    assert sum(f.text == r["subject"] for f, r in zip(found, records)) >= 9, [f.text for f in found]


def test_the_model_tells_a_name_going_on_in_lower_case_from_a_verb(real):
    rare = rare_word_test(real.tokenizer)
    assert rare("musica") and rare("sinensis") and not rare("located") and not rare("torpedo")
    prompts = ["Which instrument was Ariadne musica written for?", "What is the status of Isoetes sinensis?", "Bully Beatdown debuted on"]
    found = infer_subjects(real.model, real.tokenizer, prompts, real.model.device)
    assert [f.text for f in found] == ["Ariadne musica", "Isoetes sinensis", "Bully Beatdown"]


def test_relation_keys_keep_other_questions_about_an_edited_subject(real):
    # The docs' own example, sent without a subject as most clients do.
    editor = LemoeEditor(real.model, real.tokenizer, LemoeConfig())
    params = SamplingParams(max_new_tokens=6)
    kept = ["The official language of France is", "The capital of Germany is", "Who is the CEO of Beta?", "Where is Acme based?"]
    base = [g.text for g in editor.generate(kept, params, stack=())]
    edits, inferred = editor.complete_subjects(
        [Edit(1, "The capital of France is", "Lyon"), Edit(2, "Who is the CEO of Acme?", "Jane Doe")]
    )
    assert {k: s.text for k, s in inferred.items()} == {1: "France", 2: "Acme"}
    trained = editor.train(edits, name="e1")
    editor.add_expert(trained.entry)

    answers = editor.generate([e.prompt for e in edits] + ["What is the capital of France?"], params)
    assert [g.route.expert_name for g in answers] == ["e1"] * 3
    assert answers[0].text.strip().startswith("Lyon") and answers[1].text.strip().startswith("Jane Doe")
    after = editor.generate(kept, params)
    assert [g.route.expert_index for g in after] == [None] * 4 and [g.text for g in after] == base
    # The subject alone would have let the other question about France in.
    unchecked = LemoeEditor(real.model, real.tokenizer, LemoeConfig(relation_threshold=None))
    assert unchecked.route([kept[0]], stack=[trained.entry])[0].expert_name == "e1"


def test_span_keys_leave_a_subject_that_only_ends_alike_to_the_base_model(real):
    editor = LemoeEditor(real.model, real.tokenizer, LemoeConfig())
    edit = Edit(1, "Who is the CEO of Acme Holdings?", "Jane Doe", subject="Acme Holdings")
    entry = editor.keyed_entry("e1", Expert(editor.hidden_size, 1), [edit], {})  # routing reads no weights
    prompts = [edit.prompt, "Acme Holdings' CEO is", "Who is the CEO of Beta Holdings?"]
    same, reworded, other = editor.route(prompts, stack=[entry])
    assert same.expert_name == reworded.expert_name == "e1"
    assert other.expert_index is None
    # Its last token alone ("Holdings") would have let the other company in; the span check and
    # the token check each keep it out.
    last_token_only = LemoeEditor(real.model, real.tokenizer, LemoeConfig(subject_span_threshold=None, subject_token_check=False))
    assert last_token_only.route([prompts[2]], stack=[entry])[0].expert_name == "e1"
    for config in (LemoeConfig(subject_token_check=False), LemoeConfig(subject_span_threshold=None)):
        one_check = LemoeEditor(real.model, real.tokenizer, config)
        assert [d.expert_name for d in one_check.route(prompts, stack=[entry])] == ["e1", "e1", None]


def test_the_token_check_serves_the_subject_in_any_case_and_place_and_no_name_that_contains_it(real):
    editor = LemoeEditor(real.model, real.tokenizer, LemoeConfig())
    edit = Edit(1, "The capital of France is", "Lyon", subject="France")
    entry = editor.keyed_entry("e1", Expert(editor.hidden_size, 1), [edit], {})
    assert entry.subject_token_ids is not None and entry.subject_token_ids.shape == (1, int(entry.subject_lengths[0]))
    served = ["The capital of France is", "the capital of FRANCE is", "France's capital city is", "France: its capital is"]
    assert [d.expert_name for d in editor.route(served, stack=[entry])] == ["e1"] * len(served)
    # A longer word that starts with the subject is not the subject; the model reads left to right,
    # so its first token's state is France's own, and only the token check tells them apart.
    longer = "The capital of Franceville is"
    assert editor.route([longer], stack=[entry])[0].expert_index is None
    unchecked = LemoeEditor(real.model, real.tokenizer, LemoeConfig(subject_token_check=False))
    assert unchecked.route([longer], stack=[entry])[0].expert_name == "e1"
