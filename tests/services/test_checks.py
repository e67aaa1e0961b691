"""Input checks and error messages of the service layer (no HTTP, no model)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from app.config import Settings
from app.errors import InvalidInput
from app.services.checks import check_actor, check_filter, check_text, to_utc
from app.services.stack import resolve_path, stored_path


@pytest.mark.parametrize("actor", ["alice", "ci-bot@example.com", "Team A/ops:1", "x" * 100])
def test_good_actors_pass(actor):
    assert check_actor(actor) == actor


def test_missing_actor_is_anonymous():
    assert check_actor(None) == "anonymous"


@pytest.mark.parametrize("actor", ["", " lead", "a" * 101, "<b>", "tab\there", "é", "new\nline"])
def test_bad_actors_name_the_header(actor):
    with pytest.raises(InvalidInput, match="X-Actor"):
        check_actor(actor)


@pytest.mark.parametrize(
    ("value", "words"),
    [(None, "string"), ("", "empty"), ("  ", "whitespace"), ("x" * 11, "at most 10"), ("a\x00", "NUL"), ("\ud800", "surrogate")],
)
def test_check_text_names_field_and_problem(value, words):
    with pytest.raises(InvalidInput) as error:
        check_text(value, field="edits[2].target", max_chars=10)
    assert "edits[2].target" in str(error.value) and words in str(error.value)


def test_blank_filters_mean_no_filter():
    assert check_filter("  ", field="q", max_chars=5) is None
    assert check_filter(None, field="q", max_chars=5) is None
    assert check_filter("abc", field="q", max_chars=5) == "abc"


def test_to_utc_takes_naive_as_utc_and_converts_others():
    naive = datetime(2024, 5, 1, 12, 0)
    assert to_utc(naive, field="since") == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    paris = datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    assert to_utc(paris, field="since") == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert to_utc(None, field="since") is None


def test_to_utc_clamps_bounds_beyond_the_representable_range():
    """Valid date-times whose UTC time is before year 1 or after 9999 (no 500, no 422)."""
    late = datetime(9999, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-5)))
    assert to_utc(late, field="until") == datetime.max.replace(tzinfo=UTC)
    early = datetime(1, 1, 1, 0, 0, tzinfo=timezone(timedelta(hours=23, minutes=59)))
    assert to_utc(early, field="since") == datetime.min.replace(tzinfo=UTC)


def test_blank_filters_are_still_checked():
    with pytest.raises(InvalidInput, match="at most 5"):
        check_filter(" " * 6, field="q", max_chars=5)
    with pytest.raises(InvalidInput, match="NUL"):
        check_filter("\x00", field="q", max_chars=5)


def test_expert_paths_are_stored_relative_to_the_data_dir(tmp_path: Path):
    settings = Settings(_env_file=None, data_dir=tmp_path / "data")
    inside = settings.experts_dir / "expert-r1-b0"
    outside = tmp_path / "elsewhere" / "expert-r1-b0"

    assert stored_path(settings, inside) == "experts/expert-r1-b0"
    assert resolve_path(settings, stored_path(settings, inside)) == settings.data_dir / "experts/expert-r1-b0"
    assert stored_path(settings, outside) == str(outside.resolve())
    assert resolve_path(settings, str(outside.resolve())) == outside.resolve()
    # Moving the data dir keeps relative paths valid.
    moved = Settings(_env_file=None, data_dir=tmp_path / "moved")
    assert resolve_path(moved, "experts/expert-r1-b0") == moved.data_dir / "experts" / "expert-r1-b0"
