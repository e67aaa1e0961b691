"""Inferred subjects: the base model names the span of a prompt that the edit is about."""

from __future__ import annotations

from app.lemoe.config import LemoeConfig
from app.lemoe.editor import Edit, LemoeEditor
from app.lemoe.subjects import candidate_spans, infer_subjects


def test_candidate_spans_are_whole_words_cleaned_of_punctuation():
    spans = candidate_spans("Which corporation created USS Leedstown (APA-56)?")
    assert "USS Leedstown (APA-56)" in spans and "Leedstown" in spans
    assert "USS Leedstown (APA-56" not in spans and "(APA-56)?" not in spans
    assert "Which corporation created USS Leedstown (APA-56)" not in spans  # not the whole prompt
    assert "France" in candidate_spans("France's capital city is")
    assert candidate_spans("Paris") == ["Paris"]  # a one-word prompt is its own only span


def test_where_a_prompt_names_something_every_candidate_includes_a_name():
    spans = candidate_spans("What is the university where Gerald Kelly went?")
    assert "Gerald Kelly" in spans and "university" not in spans and "the university where" not in spans
    assert all("Gerald" in s or "Kelly" in s for s in spans)
    assert "PRDM16" in candidate_spans("Which species has the PRDM16 gene?")
    assert "species" not in candidate_spans("Which species has the PRDM16 gene?")  # a digit names too
    # The first word's capital is every prompt's: "The year" names nothing.
    assert "The year" not in candidate_spans("The year Augusta Joyce Crocheron died was what?")
    # Nothing named beyond the first word: every span stays a candidate.
    assert {"France", "capital city"} <= set(candidate_spans("France's capital city is"))
    assert "the novel" in candidate_spans("Who wrote the novel?")


def test_where_a_prompt_names_something_every_candidate_begins_and_ends_at_a_name():
    spans = candidate_spans("On what date did Anthony Richard Blake die?")
    assert "Anthony Richard Blake" in spans and "Richard Blake" in spans
    assert "On what date did Anthony Richard Blake" not in spans and "did Anthony Richard Blake" not in spans
    assert "Anthony Richard Blake die" not in spans
    assert "Nebaioth" in candidate_spans("What is the name of Nebaioth father?")
    assert "Nebaioth father" not in candidate_spans("What is the name of Nebaioth father?")
    # Lower-case words inside a name stay ("Refresh the Demon", "Nigel de Jong").
    assert "Refresh the Demon" in candidate_spans("What is the name of Refresh the Demon's record label?")
    # The prompt's first word begins a name only where one follows at once or after a short joiner.
    assert {"Nigel de Jong", "Cool & Dre"} <= set(candidate_spans("Nigel de Jong plays with Cool & Dre in"))
    assert "Anthony Richard Blake" in candidate_spans("Anthony Richard Blake died on")
    assert "The college Cyril Bourlon de Rouvre" not in candidate_spans("The college Cyril Bourlon de Rouvre attended was what?")
    assert "The law in canton of Bern" not in candidate_spans("The law in canton of Bern declares the language")


def test_inferred_subjects_are_spans_of_their_prompts(tiny_model, tiny_tokenizer):
    prompts = ["Who is the CEO of Acme?", "The capital of France is", "Who wrote the novel?"]
    found = infer_subjects(tiny_model, tiny_tokenizer, prompts, tiny_model.device)
    assert len(found) == 3
    for prompt, subject in zip(prompts, found, strict=True):
        assert subject is not None and subject.text in candidate_spans(prompt) and subject.method == "model-span"


def test_complete_subjects_keeps_the_clients_and_fills_the_rest(tiny_model, tiny_tokenizer):
    editor = LemoeEditor(tiny_model, tiny_tokenizer, LemoeConfig(layer=2))
    given = Edit(1, "The capital of France is", "Rome", subject="France")
    bare = Edit(2, "Who is the CEO of Acme?", "Jane Doe")
    edits, inferred = editor.complete_subjects([given, bare])
    assert edits[0] == given and set(inferred) == {2}
    assert edits[1].subject == inferred[2].text
    off = LemoeEditor(tiny_model, tiny_tokenizer, LemoeConfig(layer=2, infer_subjects=False))
    assert off.complete_subjects([bare]) == ([bare], {})
