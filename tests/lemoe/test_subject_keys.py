"""Subject keys: an edit that names its subject fires only for prompts that mention it."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from app.lemoe.config import LemoeConfig
from app.lemoe.editor import Edit, LemoeEditor, SamplingParams
from app.lemoe.expert import Expert, ExpertEntry
from app.lemoe.io import ExpertFileError, load_expert, save_expert
from app.lemoe.routing import AnchorRouter, SubjectKeys
from app.lemoe.text import subject_token_index, subject_view

# Sentence gate low enough that the near neighbour below passes it: only the subject key stops it.
# The tiny model is random: its subject layer's (1) states of differently cased words are unrelated,
# so case is left alone here, and tested on token identity (subject layer 0) below.
CONFIG = LemoeConfig(
    layer=2,
    max_steps=150,
    lr=3e-2,
    augmentations=0,
    gate_threshold=0.3,
    loss_threshold=0.05,
    subject_sentence_floor=0.0,
    subject_lowercase=False,
    relation_threshold=None,
    subject_span_threshold=None,  # span keys: tests/lemoe/test_span_keys.py
)
# Subject states = token embeddings: a subject matches exactly where its view has the same tokens.
TOKENS = dataclasses.replace(CONFIG, subject_layer=0, subject_lowercase=True)
FRANCE = Edit(1, "The capital of France is", "Rome", subject="France")


@pytest.fixture()
def editor(tiny_model, tiny_tokenizer):
    return LemoeEditor(tiny_model, tiny_tokenizer, CONFIG)


# --- the subject's token -----------------------------------------------------------------------
def test_subject_token_is_the_last_token_of_its_first_mention(tiny_tokenizer):
    prompt = "The capital of France is"
    index = subject_token_index(tiny_tokenizer, prompt, "france")
    ids = tiny_tokenizer(prompt)["input_ids"]
    assert tiny_tokenizer.decode(ids[: index + 1]).endswith("France")
    assert not tiny_tokenizer.decode(ids[:index]).endswith("France")


@pytest.mark.parametrize("subject", [None, "", "  ", "Germany", "The"])
def test_no_subject_token_when_absent_empty_or_first_without_a_context(tiny_tokenizer, subject):
    # "The" is the prompt's first token: a first hidden state has no context to key on.
    assert subject_token_index(tiny_tokenizer, "The capital of France is", subject) is None


@pytest.mark.parametrize("lowercase", [False, True])
def test_a_context_makes_a_first_word_subject_a_mid_sentence_token(tiny_tokenizer, lowercase):
    first = subject_view(tiny_tokenizer, "France's capital city is", context="Q:", lowercase=lowercase)
    inner = subject_view(tiny_tokenizer, "The capital of France is", context="Q:", lowercase=lowercase)
    i = subject_token_index(tiny_tokenizer, "France's capital city is", "France", context="Q:", lowercase=lowercase)
    j = subject_token_index(tiny_tokenizer, "The capital of France is", "france", context="Q:", lowercase=lowercase)
    assert i >= first.first and j > inner.first  # the subject's last token may match in both
    ids_first, ids_inner = (tiny_tokenizer(v.text)["input_ids"] for v in (first, inner))
    # The same tokens either way, leading space included, whatever the subject's place in the prompt.
    span = ids_first[first.first : i + 1]
    assert tiny_tokenizer.decode(span) == (" france" if lowercase else " France")
    assert ids_inner[j + 1 - len(span) : j + 1] == span
    # The context's tokens are exactly those before the first matchable one.
    assert tiny_tokenizer(first.text[: first.start].rstrip())["input_ids"] == ids_first[: first.first]


def test_lowercase_views_of_differently_cased_prompts_are_one_text(tiny_tokenizer):
    a = subject_view(tiny_tokenizer, "  France's capital is", context="Q:", lowercase=True)
    b = subject_view(tiny_tokenizer, "FRANCE'S CAPITAL IS", context="Q:", lowercase=True)
    assert a == b and a.text == "q: france's capital is"


def test_subject_layer_must_not_be_above_the_route_layer():
    with pytest.raises(ValueError, match="subject layer"):
        LemoeConfig(layer=2, subject_layer=3).resolved_subject_layer(4)
    assert LemoeConfig().resolved_subject_layer(30) == 6
    assert LemoeConfig(route_layer=4).resolved_subject_layer(30) == 4  # the default never exceeds it


# --- the router's rule, on hand-made vectors ------------------------------------------------------
def _router() -> AnchorRouter:
    keys = SubjectKeys(torch.zeros(4), torch.ones(4), threshold=0.75, sentence_floor=0.2)
    return AnchorRouter(torch.zeros(4), threshold=0.5, supersede_margin=0.02, subject=keys)


E = torch.eye(4)
NAN = torch.full((4,), math.nan)
KEYED = ExpertEntry("keyed", Expert(4, 2), anchors=E[0:1], edit_ids=[1], subject_anchors=E[2:3])
PLAIN = ExpertEntry("plain", Expert(4, 2), anchors=E[1:2], edit_ids=[2], subject_anchors=NAN[None])


def _states(*tokens: torch.Tensor) -> torch.Tensor:
    return torch.stack(list(tokens))[None]  # (1, T, 4)


def test_keyed_edit_needs_its_subject_even_with_an_identical_sentence():
    router = _router()
    other_subject = _states(E[3], E[3], E[1] + E[3])
    [decision] = router.route(E[0:1], [KEYED, PLAIN], other_subject)
    assert decision.expert_index is None and decision.nearest_edit_id == 1


def test_keyed_edit_fires_where_its_subject_is_mentioned_below_the_sentence_gate():
    router = _router()
    mentions_subject = _states(E[3], E[2], E[3])
    reworded = (E[0] + 2 * E[3])[None]  # cosine 0.45 with the keyed anchor: below the gate, above the floor
    [decision] = router.route(reworded, [KEYED, PLAIN], mentions_subject)
    assert decision.expert_name == "keyed" and decision.subject_score == pytest.approx(1.0)
    assert decision.score == pytest.approx(1 / 5**0.5)


def test_mentioning_the_subject_in_an_unrelated_sentence_is_not_enough():
    router = _router()
    [decision] = router.route((E[0] + 9 * E[3])[None], [KEYED], _states(E[3], E[2]))  # cosine 0.11 < floor
    assert decision.expert_index is None


def test_tokens_outside_the_mask_never_match_a_subject():
    router = _router()
    subject_first = _states(E[2], E[3], E[3])
    [decision] = router.route(E[0:1], [KEYED], subject_first, torch.tensor([[0, 1, 1]]))
    assert decision.expert_index is None
    [decision] = router.route(E[0:1], [KEYED], subject_first, torch.tensor([[1, 1, 1]]))
    assert decision.expert_name == "keyed"


def test_edit_without_a_subject_key_keeps_the_sentence_gate():
    router = _router()
    states = _states(E[3], E[3])
    [near] = router.route(E[1:2], [KEYED, PLAIN], states)
    [far] = router.route((E[3] - E[1])[None], [KEYED, PLAIN], states)
    assert near.expert_name == "plain" and near.subject_score is None
    assert far.expert_index is None


def test_among_subject_matches_the_closer_sentence_wins():
    router = _router()
    second = ExpertEntry("second", Expert(4, 2), anchors=E[1:2], edit_ids=[3], subject_anchors=E[2:3])
    [decision] = router.route((E[1] + 0.1 * E[0])[None], [KEYED, second], _states(E[3], E[2]))
    assert decision.expert_name == "second"


# --- end to end on the tiny model -----------------------------------------------------------------
def test_near_neighbour_is_left_to_the_base_model_and_the_subject_still_reaches(editor):
    neighbour, reworded = "The capital of Germany is", "Name the capital of France"
    base = {g.prompt: g.text for g in editor.generate([neighbour, reworded], SamplingParams(max_new_tokens=6))}
    trained = editor.train([FRANCE], name="e1")
    assert trained.meta["subject_keyed_edits"] == 1
    editor.add_expert(trained.entry)
    edited, near, other = editor.generate([FRANCE.prompt, neighbour, reworded], SamplingParams(max_new_tokens=6))
    assert edited.route.expert_name == "e1" and edited.text.strip().startswith("Rome")
    # The neighbour's sentence clears the sentence gate; only the subject key shuts it out.
    assert near.route.score is not None and near.route.score >= CONFIG.gate_threshold
    assert near.route.expert_index is None and near.text == base[neighbour]
    assert other.route.expert_name == "e1" and other.route.subject_score >= CONFIG.subject_threshold


def test_subject_matches_at_the_start_in_any_case_and_not_another_subject(tiny_model, tiny_tokenizer):
    editor = LemoeEditor(tiny_model, tiny_tokenizer, TOKENS)
    editor.add_expert(editor.train([FRANCE], name="e1").entry)
    prompts = ["France's capital city is", "france's capital city is", "FRANCE'S capital city is", "Germany's capital city is"]
    *served, other = editor.generate(prompts, SamplingParams(max_new_tokens=2))
    for g in served:
        assert g.route.expert_name == "e1" and g.route.subject_score == pytest.approx(1.0), g.prompt
    assert other.route.expert_index is None


def test_without_lowercasing_another_case_is_other_tokens(tiny_model, tiny_tokenizer):
    editor = LemoeEditor(tiny_model, tiny_tokenizer, dataclasses.replace(TOKENS, subject_lowercase=False))
    editor.add_expert(editor.train([FRANCE], name="e1").entry)
    same, upper = editor.generate(["France's capital city is", "FRANCE'S capital city is"], SamplingParams(max_new_tokens=2))
    assert same.route.expert_name == "e1" and upper.route.expert_index is None


def test_request_subject_states_are_the_keys_own_reading(editor):
    # The key is the request-side state of the edit's own prompt at the subject's token.
    keys = editor.subject_anchors([FRANCE]).subject
    states, mask = editor.subject_states([FRANCE.prompt])
    index = editor._subject_span(FRANCE.prompt, FRANCE.subject)[1]
    assert mask[0, index] == 1 and torch.equal(keys[0], states[0, index])
    assert mask[0, : subject_view(editor.tokenizer, FRANCE.prompt, context="Q:").first].sum() == 0


def test_sentence_keys_alone_let_the_neighbour_in(tiny_model, tiny_tokenizer):
    editor = LemoeEditor(tiny_model, tiny_tokenizer, dataclasses.replace(CONFIG, subject_keys=False))
    trained = editor.train([FRANCE], name="e1")
    assert trained.entry.subject_anchors is None
    editor.add_expert(trained.entry)
    [near] = editor.generate(["The capital of Germany is"], SamplingParams(max_new_tokens=2))
    assert near.route.expert_name == "e1"


def test_edit_whose_prompt_lacks_its_subject_routes_by_sentence(editor):
    edit = Edit(5, "Who wrote the novel?", "Tolstoy", subject="War and Peace")
    trained = editor.train([edit], name="e1")
    assert trained.meta["subject_keyed_edits"] == 0
    assert torch.isnan(trained.entry.subject_anchors).all()
    editor.add_expert(trained.entry)
    [g] = editor.generate([edit.prompt], SamplingParams(max_new_tokens=2))
    assert g.route.expert_name == "e1" and g.route.subject_score is None


def test_rephrase_anchors_share_their_edit_subject_key(editor):
    edit = dataclasses.replace(FRANCE, rephrases=("France has its capital in",))
    keys = editor.subject_anchors([edit, Edit(2, "Who wrote the novel?", "Tolstoy")]).subject
    assert keys.shape == (3, editor.hidden_size)
    assert torch.equal(keys[0], keys[2]) and torch.isnan(keys[1]).all()


# --- persistence ----------------------------------------------------------------------------------
def test_subject_keys_round_trip_through_safetensors(tmp_path):
    keys = torch.stack([torch.randn(8), torch.full((8,), math.nan)])
    entry = ExpertEntry("e1", Expert(8, 4), anchors=torch.randn(2, 8), edit_ids=[1, 2], subject_anchors=keys)
    save_expert(entry, tmp_path / "e1")
    loaded = load_expert(tmp_path / "e1")
    assert torch.equal(loaded.subject_anchors[0], keys[0]) and torch.isnan(loaded.subject_anchors[1]).all()
    plain = ExpertEntry("e2", Expert(8, 4), anchors=torch.randn(2, 8))
    save_expert(plain, tmp_path / "e2")
    assert load_expert(tmp_path / "e2").subject_anchors is None


def test_subject_keys_that_do_not_match_the_anchors_are_loud(tmp_path):
    entry = ExpertEntry("e1", Expert(8, 4), anchors=torch.randn(2, 8), subject_anchors=torch.randn(3, 8))
    save_expert(entry, tmp_path / "e1")
    with pytest.raises(ExpertFileError, match="subject keys"):
        load_expert(tmp_path / "e1")


def test_no_subject_pass_for_a_stack_without_subject_keys(editor):
    plain = editor.train([Edit(2, "Who wrote the novel?", "Tolstoy")], name="plain")
    assert torch.isnan(plain.entry.subject_anchors).all()
    mask = torch.ones(1, 3, dtype=torch.long)
    assert editor.route_state(mask, stack=[plain.entry], prompts=["Who wrote the novel?"]).subject_states is None
    keyed = editor.train([FRANCE], name="keyed")
    state = editor.route_state(mask, stack=[plain.entry, keyed.entry], prompts=["Who wrote the novel?"])
    assert state.subject_states is not None and state.subject_mask.shape == state.subject_states.shape[:2]


def test_an_expert_keyed_by_another_subject_view_is_flagged_on_load(editor, caplog):
    entry = editor.train([FRANCE], name="e1").entry
    assert entry.meta["subject_view"] == {"context": "Q:", "lowercase": False}
    with caplog.at_level("WARNING", logger="app.lemoe.editor"):
        editor.add_expert(entry)
        assert not caplog.records
        del entry.meta["subject_view"]  # an expert trained before subject views: keys of the bare prompt
        editor.set_stack([entry])
    assert len(caplog.records) == 1 and "e1" in caplog.records[0].getMessage()
    # It routes by its wording alone: its own prompt still reaches it through the sentence gate.
    [served] = editor.stack
    assert served.subject_anchors is None and entry.subject_anchors is not None
    [g] = editor.generate([FRANCE.prompt], SamplingParams(max_new_tokens=4))
    assert g.route.expert_name == "e1" and g.route.subject_score is None
