"""The subject token check: an edit with a subject key fires only where the prompt's tokens ending
at the match are its subject's own token ids and a word ends there (states that are only alike,
or a longer word that starts with the subject, do not count)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from app.lemoe.config import LemoeConfig
from app.lemoe.editor import Edit, LemoeEditor
from app.lemoe.expert import Expert, ExpertEntry
from app.lemoe.io import ExpertFileError, load_expert, save_expert
from app.lemoe.routing import AnchorRouter, SubjectKeys, SubjectTokens
from tests.lemoe.synthetic_keys import E, keyed_entry, token_states

# The edit's subject is two tokens, ids 7 and 8; its subject key is E[3] (the state at its last token).
KEYED = keyed_entry(E[3:4], 2, subject_token_ids=torch.tensor([[7, 8]]))


def _router(token_check: bool = True) -> AnchorRouter:
    keys = SubjectKeys(torch.zeros(6), torch.ones(6), threshold=0.75, sentence_floor=-1.0, token_check=token_check)
    return AnchorRouter(torch.zeros(6), threshold=0.5, supersede_margin=0.02, subject=keys)


def _tokens(ids: list[int], word_ends: list[bool] | None = None) -> SubjectTokens:
    return SubjectTokens(torch.tensor([ids]), torch.tensor([word_ends or [True] * len(ids)]))


def _route(router: AnchorRouter, entry: ExpertEntry, tokens: SubjectTokens | None) -> str | None:
    # Every prompt below matches the subject key at its third token (E[3]).
    states = token_states(E[1], E[2], E[3], E[4])
    return router.route(E[0:1], [entry], states, subject_tokens=tokens)[0].expert_name


def test_the_subject_s_own_tokens_at_the_match_are_served():
    assert _route(_router(), KEYED, _tokens([5, 7, 8, 9])) == "keyed"


def test_alike_states_on_other_tokens_are_not():
    assert _route(_router(), KEYED, _tokens([5, 6, 8, 9])) is None  # another first token
    assert _route(_router(), KEYED, _tokens([7, 8, 8, 9])) is None  # the span ends one token early
    assert _route(_router(token_check=False), KEYED, _tokens([5, 6, 8, 9])) == "keyed"


def test_a_longer_word_that_starts_with_the_subject_is_not_it():
    assert _route(_router(), KEYED, _tokens([5, 7, 8, 9], [True, True, False, True])) is None


def test_a_subject_longer_than_the_text_before_the_match_is_not_served():
    entry = dataclasses.replace(KEYED, subject_lengths=torch.tensor([4]), subject_token_ids=torch.tensor([[6, 5, 7, 8]]))
    assert _route(_router(), entry, _tokens([5, 7, 8, 9])) is None


def test_experts_without_token_ids_and_requests_without_tokens_are_not_checked():
    older = dataclasses.replace(KEYED, subject_token_ids=None)
    assert _route(_router(), older, _tokens([5, 6, 8, 9])) == "keyed"
    assert _route(_router(), KEYED, None) == "keyed"
    unknown = dataclasses.replace(KEYED, subject_token_ids=torch.tensor([[-1, -1]]))  # an edit without a subject
    assert _route(_router(), unknown, _tokens([5, 6, 8, 9])) == "keyed"


def test_an_index_extended_with_longer_subjects_pads_the_ids():
    router = _router()
    short = dataclasses.replace(KEYED, name="short", subject_lengths=torch.tensor([1]), subject_token_ids=torch.tensor([[8]]))
    router.index((short,))
    both = router.index((short, KEYED))  # built by extending the first index
    assert both.tokens is not None and both.tokens.tolist() == [[8, -1], [7, 8]]


def test_token_ids_are_made_from_the_subject_view_and_saved_with_the_expert(tiny_model, tiny_tokenizer, tmp_path):
    editor = LemoeEditor(tiny_model, tiny_tokenizer, LemoeConfig(layer=2, subject_layer=0))
    edits = [
        Edit(1, "Who is the CEO of Acme Holdings?", "Jane", subject="Acme Holdings", rephrases=("Who runs Acme Holdings?",)),
        Edit(2, "Who wrote the novel?", "Tolstoy"),
    ]
    entry = editor.keyed_entry("e1", Expert(editor.hidden_size, 1), edits, {})  # routing reads no weights
    ids = entry.subject_token_ids
    # Lower-cased, with its leading space: as the subject reads mid-sentence.
    spelled = tiny_tokenizer(" acme holdings", add_special_tokens=False)["input_ids"]
    assert ids.shape[0] == 3 and ids[0, : len(spelled)].tolist() == spelled and int(entry.subject_lengths[0]) == len(spelled)
    assert (ids[1] == -1).all() and torch.equal(ids[2], ids[0])  # no subject; a rephrase shares its edit's
    save_expert(entry, tmp_path / "e1")
    assert torch.equal(load_expert(tmp_path / "e1").subject_token_ids, ids.cpu())


def test_token_ids_that_do_not_match_the_anchors_are_loud(tmp_path):
    keyed = dataclasses.replace(KEYED, relation_anchors=E[0:1].clone())
    save_expert(dataclasses.replace(keyed, subject_token_ids=torch.tensor([[7, 8], [7, 8]])), tmp_path / "rows")
    save_expert(dataclasses.replace(keyed, subject_token_ids=torch.tensor([[8]])), tmp_path / "short")
    for bad in ("rows", "short"):
        with pytest.raises(ExpertFileError, match="subject token ids do not match its anchors"):
            load_expert(tmp_path / bad)


def test_the_setting_reaches_the_router(tiny_model, tiny_tokenizer):
    assert LemoeEditor(tiny_model, tiny_tokenizer, LemoeConfig(layer=2)).router.subject.token_check is True
    off = LemoeEditor(tiny_model, tiny_tokenizer, LemoeConfig(layer=2, subject_token_check=False))
    assert off.router.subject.token_check is False
