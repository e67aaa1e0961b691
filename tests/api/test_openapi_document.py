"""The patterns the OpenAPI document states mean what the services check, in both regex
dialects (Python's and the ECMA one of JSON Schema validators, here jsonschema-rs)."""

from __future__ import annotations

import re
import sys

import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.errors import InvalidInput
from app.schemas.common import NO_NUL_PATTERN, NON_BLANK_PATTERN, WHITESPACE_CLASS
from app.services.checks import ACTOR_MAX_CHARS, ACTOR_RE, check_actor, check_text
from app.store.errors import InvalidCursor
from app.store.pagination import CURSOR_KINDS, MAX_ID, cursor_pattern, decode_cursor, encode_cursor

EXAMPLES = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Text rich in the characters the rules are about: every kind of whitespace, NUL, letters.
WHITESPACE = "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())
TEXT = st.text(alphabet=st.sampled_from(WHITESPACE + "\x00\ufeffab1") | st.characters(codec="utf-8"), max_size=12)


def both_dialects(pattern: str):
    """`pattern` as Python reads it and as a JSON Schema validator does; they must agree.
    (ECMA's `$` is Python's `\\Z`: Python's also matches before a final newline.)"""
    python = re.compile(pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern)
    ecma = jsonschema_rs.validator_for({"type": "string", "pattern": pattern})

    def matches(value: str) -> bool:
        in_python = python.search(value) is not None
        assert ecma.is_valid(value) == in_python, (pattern, value)
        return in_python

    return matches


def test_the_whitespace_class_is_pythons_whitespace():
    spelled = re.compile(f"[{WHITESPACE_CLASS}]")
    assert [c for c in range(sys.maxunicode + 1) if spelled.fullmatch(chr(c))] == [ord(c) for c in WHITESPACE]


@EXAMPLES
@given(TEXT)
def test_non_blank_pattern_is_check_text(value: str):
    try:
        check_text(value, field="prompt", max_chars=100)
        accepted = True
    except InvalidInput:
        accepted = False
    assert both_dialects(NON_BLANK_PATTERN)(value) == accepted


@EXAMPLES
@given(TEXT)
def test_no_nul_pattern(value: str):
    assert both_dialects(NO_NUL_PATTERN)(value) == ("\x00" not in value)


ACTOR_PATTERN = f"^{ACTOR_RE.pattern}$"


@EXAMPLES
@given(st.text(alphabet=st.sampled_from("aZ9._@:+/ -!<\n\t\x00é"), max_size=8) | st.from_regex(ACTOR_RE, fullmatch=True))
def test_actor_pattern_is_check_actor(value: str):
    try:
        check_actor(value)
        accepted = True
    except InvalidInput:
        accepted = False
    assert (both_dialects(ACTOR_PATTERN)(value) and len(value) <= ACTOR_MAX_CHARS) == accepted


def cursors(kind: str):
    ids = st.integers(0, 2**64) | st.sampled_from([MAX_ID, MAX_ID + 1, 1, 0])
    other = st.sampled_from([k for k in CURSOR_KINDS if k != kind])
    return (
        st.builds("{}.{}".format, st.just(kind) | other, ids)
        | st.builds("{}.0{}".format, st.just(kind), ids)
        | st.builds(lambda c, suffix: c + suffix, st.builds("{}.{}".format, st.just(kind), ids), st.sampled_from(["\n", " ", "x", ".1"]))
        | st.text(max_size=20)
    )


@pytest.mark.parametrize("kind", CURSOR_KINDS)
def test_cursor_pattern_is_decode_cursor(kind: str):
    matches = both_dialects(cursor_pattern(kind))

    @EXAMPLES
    @given(cursors(kind))
    def check(value: str):
        if value == "":
            assert matches(value)  # the services read an empty cursor as none
            return
        try:
            decode_cursor(value, kind=kind)
            accepted = True
        except InvalidCursor:
            accepted = False
        assert matches(value) == accepted

    check()
    assert decode_cursor(encode_cursor(kind=kind, after_id=MAX_ID), kind=kind) == MAX_ID
