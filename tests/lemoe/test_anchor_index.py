"""The anchor index: every anchor of a stack snapshot concatenated and normalised once, and the
routes it gives exactly those of the per-request computation it replaced."""

from __future__ import annotations

import pytest
import torch

from app.lemoe.config import LemoeConfig
from app.lemoe.editor import Edit, LemoeEditor
from app.lemoe.expert import Expert
from app.lemoe.routing import AnchorRouter, relation_anchor_matrix, subject_anchor_matrix

# A low sentence gate and relation threshold so that many prompts reach an expert on the random
# tiny model, through every kind of key.
CONFIG = LemoeConfig(layer=2, gate_threshold=0.3, subject_sentence_floor=0.0, subject_lowercase=False, relation_threshold=0.2)
SUBJECTS = ["France", "Germany", "Paris", "Berlin", "the river", "the novel", "the fox", "the dog"]
RELATIONS = ["The capital of {} is", "The name of {} is", "Who wrote about {}?", "When was {} founded?"]


@pytest.fixture()
def editor(tiny_model, tiny_tokenizer):
    torch.manual_seed(0)
    editor = LemoeEditor(tiny_model, tiny_tokenizer, CONFIG)
    edits = [
        Edit(k, r.format(s), "x", subject=s, rephrases=(r.format(s) + " really",))
        for k, (s, r) in enumerate(((s, r) for s in SUBJECTS for r in RELATIONS[:3]), start=1)
    ]
    edits.append(Edit(99, "The quick brown fox jumps", "y"))  # no subject: routed by its sentence key alone
    editor.set_stack([editor.keyed_entry(f"e{i}", Expert(editor.hidden_size, 8), edits[i : i + 5], {}) for i in range(0, len(edits), 5)])
    return editor


PROMPTS = [r.format(s) for s in SUBJECTS for r in RELATIONS] + ["Answer the question briefly.", "The quick brown fox jumps over"]


def _inputs(editor: LemoeEditor, prompts: list[str]):
    states, mask = editor.subject_states(prompts)
    return editor.queries(prompts), states, mask, editor.relation_weights(prompts, mask)


def test_scores_are_exactly_those_of_the_per_request_computation(editor):
    stack = editor.stack
    queries, states, mask, relation_weights = _inputs(editor, PROMPTS)
    sims, eligible, subject_sims, relation_sims, _ = editor.router.eligibility(queries, stack, states, mask, relation_weights)
    router, keys = editor.router, editor.router.subject
    # What routing computed at every request before the index: all anchors concatenated and
    # normalised, the subject keys' NaN rows zeroed, then normalised.
    expected_sims = router.normalise(queries) @ router.normalise(torch.cat([e.anchors for e in stack])).T
    expected_subject = keys.scores(states, mask, subject_anchor_matrix(stack, states.shape[-1]))
    assert torch.equal(sims, expected_sims)
    # Subject keys are compared where the sentence clears the floor for some prompt (only those
    # can fire): exactly as before there, -2 (never a match) elsewhere.
    candidates = ((sims >= keys.sentence_floor) & expected_subject.keyed).any(dim=0)
    assert 0 < int(candidates.sum()) < sims.shape[1]
    assert torch.equal(subject_sims[:, candidates], expected_subject.scores[:, candidates])
    assert bool((subject_sims[:, ~candidates] == -2.0).all())
    assert relation_anchor_matrix(stack, states.shape[-1]).shape == (sims.shape[1], states.shape[-1])
    # The stack exercises every path: routed by subject and relation keys, and by a sentence key alone.
    decisions = editor.route(PROMPTS)
    assert sum(d.relation_score is not None for d in decisions) >= 10
    assert any(d.expert_index is not None and d.subject_score is None for d in decisions)
    assert any(d.expert_index is None for d in decisions)
    assert bool(eligible.any()) and bool((~torch.isnan(relation_sims)).any())


def test_a_warm_index_routes_as_a_cold_router(editor):
    warm = editor.route(PROMPTS)
    assert editor.route(PROMPTS) == warm
    cold = editor.router
    editor.router = AnchorRouter(cold.center, cold.threshold, cold.supersede_margin, cold.subject)
    assert editor.route(PROMPTS) == warm


def test_one_index_per_stack_snapshot_and_a_new_stack_gets_its_own(editor):
    stack = editor.stack
    index = editor.router.index(stack)
    assert editor.router.index(stack) is index
    assert index.sentence.shape[0] == sum(len(e.anchors) for e in stack) and index.any_keyed
    newest = editor.keyed_entry("newest", Expert(editor.hidden_size, 8), [Edit(500, "The capital of Spain is", "z", subject="Spain")], {})
    editor.add_expert(newest)
    grown = editor.router.index(editor.stack)
    assert grown is not index and grown.sentence.shape[0] == index.sentence.shape[0] + 1
    [d] = editor.route(["The capital of Spain is"])
    assert d.expert_name == "newest"
    # A bounded cache: stacks older than the last few are dropped; the same experts again (the
    # newest removed) get the index they had, whichever tuple holds them.
    editor.set_stack(editor.stack[:-1])
    assert editor.router.index(editor.stack) is index
    assert all(known is not stack for known, _ in editor.router._indexes)
    assert editor.router.index(stack) is index


def test_a_stack_without_subject_keys_reads_no_subject_states(editor):
    unkeyed = [Edit(1, "The capital of Spain is", "z")]
    editor.set_stack([editor.keyed_entry("plain", Expert(editor.hidden_size, 8), unkeyed, {})])
    assert not editor.router.index(editor.stack).any_keyed
    state = editor.route_state(torch.ones(1, 3, dtype=torch.long), stack=None, prompts=["The capital of Spain is"])
    assert state.subject_states is None
    [d] = editor.route(["The capital of Spain is"])
    assert d.expert_name == "plain" and d.subject_score is None


def test_an_index_extended_by_new_experts_equals_one_built_afresh(editor):
    editor.router.index(editor.stack)
    newest = editor.keyed_entry("newest", Expert(editor.hidden_size, 8), [Edit(500, "The capital of Spain is", "z", subject="Spain")], {})
    unkeyed = editor.keyed_entry("plain", Expert(editor.hidden_size, 8), [Edit(501, "The quick brown fox sleeps", "w")], {})
    editor.add_expert(newest)
    editor.add_expert(unkeyed)
    extended = editor.router.index(editor.stack)  # from the previous stack's index, two experts on
    fresh = editor.router.build_index(editor.stack)
    for name in ("sentence", "owners", "keyed", "subject", "relation_keyed", "lengths"):
        assert torch.equal(getattr(extended, name), getattr(fresh, name)), name
    assert torch.equal(torch.nan_to_num(extended.relation, 7.0), torch.nan_to_num(fresh.relation, 7.0))
    assert extended.edit_ids == fresh.edit_ids and extended.edit_ids[-2:] == [500, 501] and extended.any_keyed
    assert [d.expert_name for d in editor.route(["The capital of Spain is", "The quick brown fox sleeps"])] == ["newest", "plain"]


def test_another_tuple_of_the_same_experts_shares_their_index(editor):
    index = editor.router.index(editor.stack)
    assert editor.router.index(list(editor.stack)) is index
    assert editor.route(PROMPTS, stack=list(editor.stack)) == editor.route(PROMPTS)


@pytest.mark.parametrize("floor", [-1.0, 0.0, 0.9])  # every anchor a candidate, some, few or none
def test_subject_scores_are_exact_wherever_the_floor_lets_anchors_through(editor, floor):
    editor.router.subject.sentence_floor = floor
    queries, states, mask, relation_weights = _inputs(editor, PROMPTS)
    sims, _, subject_sims, *_ = editor.router.eligibility(queries, editor.stack, states, mask, relation_weights)
    expected = editor.router.subject.scores(states, mask, subject_anchor_matrix(editor.stack, states.shape[-1]))
    candidates = ((sims >= floor) & expected.keyed).any(dim=0)
    assert torch.equal(subject_sims[:, candidates], expected.scores[:, candidates])
    assert bool((subject_sims[:, ~candidates] == -2.0).all())
    if floor == -1.0:
        assert bool(candidates[expected.keyed].all())
