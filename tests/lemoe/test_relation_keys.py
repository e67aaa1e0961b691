"""Relation keys: an edit with a subject key fires only for prompts that ask what it asks about
that subject, not for every question that mentions it."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from app.lemoe.config import LemoeConfig
from app.lemoe.editor import Edit, LemoeEditor
from app.lemoe.expert import Expert, ExpertEntry
from app.lemoe.io import ExpertFileError, load_expert, save_expert
from app.lemoe.routing import AnchorRouter, SubjectKeys
from app.lemoe.text import subject_token_span, subject_view, token_rarity
from tests.lemoe.synthetic_keys import E, keyed_entry, keyed_router, token_states


def _router(relation_threshold: float | None = 0.5) -> AnchorRouter:
    return keyed_router(relation_threshold=relation_threshold)


# The edit asks relation E[0] (its non-subject tokens) about subject E[2] (one token long).
KEYED = keyed_entry(E[2:3], 1, relation_anchors=E[0:1])

_states = token_states


def test_relation_vectors_leave_out_the_subject_span():
    keys = SubjectKeys(torch.zeros(6), torch.ones(6), 0.75, 0.0, 0.5)
    states = _states(E[0], E[2], E[3], E[1])  # relation, a two-token subject, relation
    [v] = keys.relation_vectors(states, None, torch.tensor([0]), torch.tensor([2]), torch.tensor([2]))
    assert torch.allclose(v, (E[0] + E[1]) / 2**0.5)
    masked = torch.tensor([[0, 1, 1, 1]])  # a token outside the mask is never read
    [v] = keys.relation_vectors(states, masked, torch.tensor([0]), torch.tensor([2]), torch.tensor([2]))
    assert torch.allclose(v, E[1])
    [empty] = keys.relation_vectors(_states(E[2]), None, torch.tensor([0]), torch.tensor([0]), torch.tensor([1]))
    assert not empty.any()  # all subject: nothing else asked, matches nothing


def test_same_subject_same_question_fires_another_question_does_not():
    router = _router()
    [same] = router.route(E[0:1], [KEYED], _states(E[0], E[2]))
    [other_question] = router.route(E[0:1], [KEYED], _states(E[4], E[2]))
    assert same.expert_name == "keyed" and same.relation_score == pytest.approx(1.0)
    assert other_question.expert_index is None
    # Without the relation check the subject alone lets the other question in.
    [unchecked] = _router(None).route(E[0:1], [KEYED], _states(E[4], E[2]))
    assert unchecked.expert_name == "keyed" and unchecked.relation_score is None


def test_the_relation_is_read_where_the_subject_matched():
    router = _router()
    # The matched subject token sits in the middle; the tokens around it carry the relation.
    [decision] = router.route(E[0:1], [KEYED], _states(E[0], E[2], E[0]))
    assert decision.expert_name == "keyed"
    # The request's relation weights leave out an earlier sentence that asks something else.
    states = _states(E[4], E[4], E[0], E[2])
    [noisy] = router.route(E[0:1], [KEYED], states)
    [windowed] = router.route(E[0:1], [KEYED], states, None, torch.tensor([[0, 0, 1, 1]]))
    assert noisy.expert_index is None and windowed.expert_name == "keyed"


def test_an_anchor_without_a_relation_key_is_not_checked():
    router = _router()
    unchecked = dataclasses.replace(KEYED, relation_anchors=torch.full((1, 6), math.nan))
    [decision] = router.route(E[0:1], [unchecked], _states(E[4], E[2]))
    assert decision.expert_name == "keyed" and decision.relation_score is None


def test_between_anchors_that_may_fire_the_relation_decides_a_near_tie():
    # Two edits about subject E[2]: "a" asks relation E[0], "b" relation E[1]. The prompt asks
    # mostly b's relation, but its sentence query is a little nearer a's anchor.
    asked = 0.6 * E[0] + 0.8 * E[1]  # relation cosines: a 0.6, b 0.8 (both pass 0.3)
    b_anchor = 0.95 * E[0] + (1 - 0.95**2) ** 0.5 * E[5]  # sentence cosines: a 1.0, b 0.95
    stack = [
        ExpertEntry(
            name,
            Expert(6, 2),
            anchors=anchor[None],
            edit_ids=[k],
            subject_anchors=E[2:3],
            subject_lengths=torch.tensor([1]),
            relation_anchors=relation[None],
        )
        for k, (name, anchor, relation) in enumerate([("a", E[0], E[0]), ("b", b_anchor, E[1])])
    ]
    states = _states(asked, E[2])
    by_sentence = _router(0.3)
    [sentence_alone] = by_sentence.route(E[0:1], stack, states)
    assert sentence_alone.expert_name == "a"
    # Sentence less half the relation's shortfall: a 1.0 - 0.2 = 0.8, b 0.95 - 0.1 = 0.85.
    by_relation = _router(0.3)
    by_relation.relation_rank_weight = 0.5
    [decision] = by_relation.route(E[0:1], stack, states)
    assert decision.expert_name == "b" and decision.nearest_edit_id == 1
    assert decision.score == pytest.approx(0.95) and decision.relation_score == pytest.approx(0.8)
    assert torch.allclose(by_relation.ranking(torch.tensor([[0.9]]), torch.tensor([[float("nan")]])), torch.tensor([[0.9]]))


def test_subject_span_covers_every_token_of_the_subject(tiny_tokenizer):
    prompt, subject = "Which family does Ramalinaceae belong to?", "Ramalinaceae"
    first, last = subject_token_span(tiny_tokenizer, prompt, subject, context="Q:", lowercase=True)
    view = subject_view(tiny_tokenizer, prompt, context="Q:", lowercase=True)
    ids = tiny_tokenizer(view.text)["input_ids"]
    assert tiny_tokenizer.decode(ids[first : last + 1]).strip() == subject.lower()


def test_the_last_sentence_starts_after_a_full_stop_not_inside_an_abbreviation(tiny_tokenizer):
    view = subject_view(tiny_tokenizer, "A festival is held since 1990. Howard Glacier is in", context="Q:")
    ids = tiny_tokenizer(view.text)["input_ids"]
    assert tiny_tokenizer.decode(ids[view.last_sentence :]).strip() == "Howard Glacier is in"
    view = subject_view(tiny_tokenizer, "Which ship did the U.S. Navy build?", context="Q:")
    assert view.last_sentence == view.first


def test_relation_vectors_weigh_each_token_by_its_weight():
    keys = SubjectKeys(torch.zeros(6), torch.ones(6), 0.75, 0.0, 0.5)
    states = _states(E[0], E[2], E[1])  # relation, subject, relation
    weights = torch.tensor([[3.0, 1.0, 1.0]])
    [v] = keys.relation_vectors(states, weights, torch.tensor([0]), torch.tensor([1]), torch.tensor([1]))
    assert torch.allclose(v, torch.nn.functional.normalize(3 * E[0] + E[1], dim=0))


def test_rarer_tokens_weigh_more_and_every_token_counts_a_little():
    weights = token_rarity(torch.tensor([0, 1, 50, 100, 1000, 10000]))
    assert weights[:4].tolist() == pytest.approx([0.05] * 4)  # the most frequent ids: the floor
    assert weights[4] == pytest.approx(math.log(10)) and weights[5] == pytest.approx(math.log(100))


def test_relation_weights_read_the_last_sentence_by_rarity(tiny_model, tiny_tokenizer):
    prompt = "A festival is held since 1990. Howard Glacier is in"
    weighted = LemoeEditor(tiny_model, tiny_tokenizer, LemoeConfig(layer=2))
    plain = LemoeEditor(tiny_model, tiny_tokenizer, LemoeConfig(layer=2, relation_token_weights=False))
    states, mask = weighted.subject_states([prompt])
    view = weighted._subject_view(prompt)
    [row] = weighted.relation_weights([prompt], mask)
    [flat] = plain.relation_weights([prompt], mask)
    assert not row[: view.last_sentence].any() and not flat[: view.last_sentence].any()  # earlier sentences: never read
    assert flat[view.last_sentence :].tolist() == mask[0, view.last_sentence :].float().tolist()
    ids = torch.tensor(view.ids[view.last_sentence :])
    assert torch.allclose(row[view.last_sentence :], token_rarity(ids))
    assert len(set(row[view.last_sentence :].tolist())) > 1


def test_relation_keys_are_made_and_saved_with_the_expert(tiny_model, tiny_tokenizer, tmp_path):
    config = LemoeConfig(layer=2, max_steps=2, augmentations=0)
    editor = LemoeEditor(tiny_model, tiny_tokenizer, config)
    edits = [
        Edit(1, "The capital of France is", "Rome", subject="France", rephrases=("France has its capital in",)),
        Edit(2, "Who wrote the novel?", "Tolstoy"),
        Edit(3, "France", "Rome", subject="France"),
    ]
    entry = editor.train(edits, name="e1").entry
    assert entry.relation_anchors.shape == entry.subject_anchors.shape == (4, editor.hidden_size)
    france = len(tiny_tokenizer(" france", add_special_tokens=False)["input_ids"])
    assert entry.subject_lengths.tolist() == [france, 0, france, france]
    assert torch.isnan(entry.relation_anchors[1]).all()  # no subject: no relation key
    assert torch.isnan(entry.relation_anchors[2]).all()  # all subject: nothing else to check
    assert not torch.isnan(entry.relation_anchors[3]).any()  # the rephrase names the subject: its own key
    assert not torch.equal(entry.relation_anchors[0], entry.relation_anchors[3])
    assert entry.meta["relation_token_weights"] is True  # how its relation keys were made
    save_expert(entry, tmp_path / "e1")
    loaded = load_expert(tmp_path / "e1")
    assert torch.equal(torch.nan_to_num(loaded.relation_anchors), torch.nan_to_num(entry.relation_anchors.cpu()))
    assert torch.equal(loaded.subject_lengths, entry.subject_lengths)


def test_relation_keys_that_do_not_match_the_anchors_are_loud(tmp_path):
    entry = ExpertEntry(
        "e1",
        Expert(6, 2),
        anchors=E[:2].clone(),
        subject_anchors=E[2:4].clone(),
        relation_anchors=E[:3].clone(),
        subject_lengths=torch.tensor([1, 1, 1]),
    )
    save_expert(entry, tmp_path / "e1")
    with pytest.raises(ExpertFileError, match="relation keys"):
        load_expert(tmp_path / "e1")
