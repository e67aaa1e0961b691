"""Inferred subjects: the base model names the span of a prompt that the edit is about."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from app.lemoe.config import LemoeConfig
from app.lemoe.editor import Edit, LemoeEditor
from app.lemoe.subjects import candidate_spans, infer_subjects, rare_word_test, whole_name


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
    # Nothing named beyond a capitalised first word that asks nothing: that word is the name.
    assert candidate_spans("France's capital city is") == ["France"]
    assert candidate_spans("Valdemarsvik, which is located in") == ["Valdemarsvik"]
    # Nothing named at all (a first word that asks or only starts a sentence names nothing):
    # every span stays a candidate.
    assert {"the novel", "novel"} <= set(candidate_spans("Who wrote the novel?"))
    assert {"france", "the capital of france"} <= set(candidate_spans("Please name the capital of france"))
    assert "born" in candidate_spans("He was born in")


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


def test_a_part_of_a_name_widens_to_the_whole_name():
    assert whole_name("Which lady Kyrre Nakkim was born to?", "Nakkim") == "Kyrre Nakkim"
    assert whole_name("Who was the male parent of Francis Folger Franklin?", "Francis") == "Francis Folger Franklin"
    assert whole_name("In which state is County of Kara Kara located?", "County of Kara") == "County of Kara Kara"
    assert whole_name("What is the position of George Cary (1611-1680)?", "George Cary") == "George Cary (1611-1680)"
    assert whole_name("Who directed Finders Keepers, Lovers Weepers!?", "Lovers Weepers") == "Finders Keepers, Lovers Weepers"
    assert whole_name("Gaetano Alibrandi, who has the position of", "Alibrandi") == "Gaetano Alibrandi"
    assert whole_name("What is Rogério de Almeida Florindo dos Santos's team?", "Rogério") == "Rogério de Almeida Florindo dos Santos"


def test_a_name_does_not_widen_past_its_own_words():
    assert whole_name("Where did Ralph Habib in Paris die?", "Ralph Habib") == "Ralph Habib"  # "in" joins nothing
    assert whole_name("What city did Paris Hilton, the heiress, visit?", "Paris Hilton") == "Paris Hilton"
    assert whole_name("Which company made Mark 19 torpedo?", "Mark 19") == "Mark 19"  # lower-case words are not named
    assert whole_name("What is the name of Nebaioth's father?", "Nebaioth") == "Nebaioth"
    assert whole_name("Who founded Acme?", "Acme") == "Acme"
    assert whole_name("What did Tolkien write?", "Oxford") == "Oxford"  # not in the prompt: unchanged
    assert whole_name("Which Acme product is Widget?", "Widget") == "Widget"  # "is" is no joiner
    # Leftwards a joiner is not crossed: a title comes first as often as a name.
    assert whole_name("Who is the CEO of Acme?", "Acme") == "Acme"
    assert whole_name("Who is the President of France?", "France") == "France"


def _rare(word: str) -> bool:
    # Stands in for `rare_word_test(tokenizer)`: these are the words SmolLM2 splits.
    return word in {"musica", "sinensis", "debuted", "motorway", "gare", "inondée", "ballo", "delle", "ingrate"}


def test_rare_lower_case_words_after_a_name_may_end_a_candidate():
    prompt = "Which instrument was Ariadne musica written for?"
    assert "Ariadne musica" not in candidate_spans(prompt)  # without the tokenizer's word test
    spans = candidate_spans(prompt, _rare)
    assert {"Ariadne", "Ariadne musica"} <= set(spans) and "Ariadne musica written" not in spans
    assert "Il ballo delle ingrate" in candidate_spans("The language of Il ballo delle ingrate was", _rare)
    assert "M5 motorway" in candidate_spans("M5 motorway is in", _rare)  # a first word that names by itself
    # Only a candidate: the model tells a name's word from a verb ("Bully Beatdown debuted").
    assert {"Bully Beatdown", "Bully Beatdown debuted"} <= set(candidate_spans("Bully Beatdown debuted on", _rare))
    # Not across a clause, and never a rare word that follows no name.
    assert "Ariadne, musica" not in candidate_spans("Which instrument was Ariadne, musica written for?", _rare)
    assert not any("musica" in s for s in candidate_spans("Which musica did Ariadne write?", _rare))


def test_rare_lower_case_words_between_names_widen_the_name():
    prompt = "Who developed La gare inondée (The Flooded Station)?"
    assert whole_name(prompt, "La gare", _rare) == "La gare inondée (The Flooded Station)"
    assert whole_name(prompt, "La gare") == "La gare"  # without the word test
    # The model's pick stands where no name follows: it chose between "Ariadne" and "Ariadne musica".
    assert whole_name("Which instrument was Ariadne musica written for?", "Ariadne", _rare) == "Ariadne"


def test_the_word_test_reads_the_tokenizer(tiny_tokenizer):
    rare = rare_word_test(tiny_tokenizer)
    words = ["the", "capital", "musica", "zzyzx", "Paris", "x1", "de"]
    for word in words:
        pieces = len(tiny_tokenizer(" " + word, add_special_tokens=False)["input_ids"])
        assert rare(word) == (word.isalpha() and word.islower() and word != "de" and pieces > 1), word


def test_inferred_subjects_are_spans_of_their_prompts(tiny_model, tiny_tokenizer):
    prompts = ["Who is the CEO of Acme?", "The capital of France is", "Who wrote the novel?"]
    found = infer_subjects(tiny_model, tiny_tokenizer, prompts, tiny_model.device)
    assert len(found) == 3
    for prompt, subject in zip(prompts, found, strict=True):
        assert subject is not None and subject.method == "model-span"
        assert subject.text == whole_name(prompt, subject.text) and subject.text in prompt


def test_complete_subjects_keeps_the_clients_and_fills_the_rest(tiny_model, tiny_tokenizer):
    editor = LemoeEditor(tiny_model, tiny_tokenizer, LemoeConfig(layer=2))
    given = Edit(1, "The capital of France is", "Rome", subject="France")
    bare = Edit(2, "Who is the CEO of Acme?", "Jane Doe")
    edits, inferred = editor.complete_subjects([given, bare])
    assert edits[0] == given and set(inferred) == {2}
    assert edits[1].subject == inferred[2].text
    off = LemoeEditor(tiny_model, tiny_tokenizer, LemoeConfig(layer=2, infer_subjects=False))
    assert off.complete_subjects([bare]) == ([bare], {})


_WORDS = [
    "What",
    "is",
    "the",
    "of",
    "de",
    "Paris",
    "Hilton,",
    "Kara",
    "Kara's",
    "(DD-218)?",
    "19",
    "torpedo?",
    "&",
    "which",
    "X-1",
    ",",
    "'quoted'",
    "Ñandú",
    "musica",
    "inondée",
]


@given(st.lists(st.sampled_from(_WORDS), min_size=1, max_size=12))
def test_a_widened_name_is_still_a_span_of_the_prompt_holding_the_models_pick(words):
    prompt = " ".join(words)
    for rare in (None, _rare):
        for span in candidate_spans(prompt, rare):
            widened = whole_name(prompt, span, rare)
            assert span in widened and widened in prompt
            assert whole_name(prompt, widened, rare) == widened
