"""Subject span keys: an edit with a subject key fires only where all of its subject matches, not
just the subject's last token ("Beta Holdings" is not "Acme Holdings")."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from app.lemoe.config import LemoeConfig
from app.lemoe.editor import Edit, LemoeEditor
from app.lemoe.io import ExpertFileError, load_expert, save_expert
from app.lemoe.routing import AnchorRouter, SubjectKeys
from tests.lemoe.synthetic_keys import E, keyed_entry, keyed_router, token_states


def _router(span_threshold: float | None = 0.6) -> AnchorRouter:
    return keyed_router(span_threshold=span_threshold)


# The edit's subject is two tokens, E[2] then E[3]: its subject key is E[3], its span key their mean.
KEYED = keyed_entry(E[3:4], 2, subject_span_anchors=(E[2:3] + E[3:4]) / 2)

_states = token_states


def test_span_vectors_average_the_tokens_ending_at_the_match():
    keys = SubjectKeys(torch.zeros(6), torch.ones(6), 0.75, 0.0, span_threshold=0.6)
    states = _states(E[0], E[2], E[3], E[1])
    [v] = keys.span_vectors(states, None, torch.tensor([0]), torch.tensor([2]), torch.tensor([2]))
    assert torch.allclose(v, torch.nn.functional.normalize(E[2] + E[3], dim=0))
    # Tokens outside the mask (the fixed context) are never read, even inside the window.
    [v] = keys.span_vectors(states, torch.tensor([[1, 0, 1, 1]]), torch.tensor([0]), torch.tensor([2]), torch.tensor([2]))
    assert torch.allclose(v, E[3])


def test_a_subject_that_only_ends_alike_is_refused():
    router = _router()
    [whole] = router.route(E[0:1], [KEYED], _states(E[1], E[2], E[3]))
    [ends_alike] = router.route(E[0:1], [KEYED], _states(E[1], E[4], E[3]))  # "Beta Holdings"
    assert whole.expert_name == "keyed"
    assert ends_alike.expert_index is None
    # Without the span check (or for an expert made before span keys) the last token decides.
    assert _router(None).route(E[0:1], [KEYED], _states(E[1], E[4], E[3]))[0].expert_name == "keyed"
    older = dataclasses.replace(KEYED, subject_span_anchors=None)
    assert _router().route(E[0:1], [older], _states(E[1], E[4], E[3]))[0].expert_name == "keyed"


def test_span_keys_are_made_and_saved_with_the_expert(tiny_model, tiny_tokenizer, tmp_path):
    editor = LemoeEditor(tiny_model, tiny_tokenizer, LemoeConfig(layer=2, max_steps=2, augmentations=0, subject_layer=0))
    edits = [
        Edit(1, "Who is the CEO of Acme Holdings?", "Jane", subject="Acme Holdings", rephrases=("Who runs Acme Holdings?",)),
        Edit(2, "Who wrote the novel?", "Tolstoy"),
    ]
    entry = editor.train(edits, name="e1").entry
    assert entry.subject_span_anchors.shape == (3, editor.hidden_size)
    assert torch.isnan(entry.subject_span_anchors[1]).all()  # no subject: no span key
    assert torch.equal(entry.subject_span_anchors[2], entry.subject_span_anchors[0])  # a rephrase shares its edit's
    assert not torch.equal(entry.subject_span_anchors[0], entry.subject_anchors[0])  # many tokens, not the last one
    save_expert(entry, tmp_path / "e1")
    loaded = load_expert(tmp_path / "e1")
    assert torch.equal(torch.nan_to_num(loaded.subject_span_anchors), torch.nan_to_num(entry.subject_span_anchors.cpu()))

    editor.add_expert(entry)
    [same, other] = editor.route(["Who is the CEO of Acme Holdings?", "Who is the CEO of Beta Holdings?"])
    assert same.expert_name == "e1" and other.expert_index is None


def test_span_keys_that_do_not_match_the_anchors_are_loud(tmp_path):
    save_expert(dataclasses.replace(KEYED, relation_anchors=E[0:1].clone(), subject_span_anchors=E[:3].clone()), tmp_path / "bad")
    with pytest.raises(ExpertFileError, match="subject span keys do not match its anchors"):
        load_expert(tmp_path / "bad")
