"""Edits: add, get, list with every filter, pagination, counts, status changes."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.domain import EditStatus, ExpertStatus, SubjectSource
from app.store import (
    Edit,
    InvalidCursor,
    RecordNotFound,
    add_edits,
    add_expert,
    count_edits,
    edits_of_expert,
    get_edit,
    list_edits,
    pending_edit,
    set_edit_status,
    set_inferred_subject,
)

SHA = "ab" * 32


def make_edits(session: Session, n: int, **kwargs: object) -> list[Edit]:
    return add_edits(session, edits=[pending_edit(f"prompt {i}", f" target {i}", **kwargs) for i in range(n)])


def ids(edits: list[Edit]) -> list[int]:
    return [e.id for e in edits]


def test_add_edits_stores_pending_edits_in_order(session_factory: sessionmaker[Session]) -> None:
    new = [
        pending_edit("The capital of France is", " Lyon", subject="France", rephrases=["France's capital:"]),
        pending_edit("The CEO of Acme is", " Jane Roe"),
    ]
    with session_factory() as s:
        added = add_edits(s, edits=new)
        s.commit()
    assert [e.prompt for e in added] == [n.prompt for n in new]
    assert added[0].id < added[1].id
    with session_factory() as s:
        first = get_edit(s, edit_id=added[0].id)
        second = get_edit(s, edit_id=added[1].id)
    assert first is not None and second is not None
    assert (first.prompt, first.target, first.subject) == ("The capital of France is", " Lyon", "France")
    assert first.rephrases == ["France's capital:"]
    assert second.rephrases == [] and second.subject is None
    assert first.subject_source is SubjectSource.CLIENT and second.subject_source is None
    assert first.status is EditStatus.PENDING
    assert first.expert_id is None and first.training_run_id is None and first.applied_at is None
    assert first.created_at == first.updated_at
    assert first.created_at.tzinfo is not None


def test_get_edit_returns_none_for_unknown_id(session: Session) -> None:
    assert get_edit(session, edit_id=12345) is None


def test_list_edits_newest_first_without_filters(session: Session) -> None:
    edits = make_edits(session, 4)
    page = list_edits(session, limit=10)
    assert ids(page.items) == sorted(ids(edits), reverse=True)
    assert page.next_cursor is None


def test_list_edits_filters_by_status(session: Session) -> None:
    edits = make_edits(session, 4)
    set_edit_status(session, edit_ids=[edits[1].id, edits[3].id], status=EditStatus.FAILED, error="boom")
    assert ids(list_edits(session, status=EditStatus.FAILED).items) == [edits[3].id, edits[1].id]
    assert ids(list_edits(session, status="pending").items) == [edits[2].id, edits[0].id]
    assert list_edits(session, status=EditStatus.APPLIED).items == []


def test_list_edits_unknown_status_names_allowed_values(session: Session) -> None:
    with pytest.raises(ValueError, match=r"unknown status 'done'; one of \[.*'pending'.*\]"):
        list_edits(session, status="done")


def test_list_edits_filters_by_subject_case_insensitively(session: Session) -> None:
    (france,) = add_edits(session, edits=[pending_edit("Capital of France?", " Lyon", subject="France")])
    add_edits(session, edits=[pending_edit("Capital of Germany?", " Bonn", subject="Germany")])
    add_edits(session, edits=[pending_edit("French food", " crepes", subject="French cuisine")])
    assert ids(list_edits(session, subject="France").items) == [france.id]
    assert ids(list_edits(session, subject="france").items) == [france.id]
    assert list_edits(session, subject="Fra").items == []  # exact, not a substring
    assert len(list_edits(session, subject="").items) == 3  # empty means no filter


def test_list_edits_search_is_case_insensitive_substring_of_prompt_target_subject(
    session: Session,
) -> None:
    a, b, c, d = add_edits(
        session,
        edits=[
            pending_edit("The Eiffel tower is in", " Rome"),
            pending_edit("Who leads Acme?", " Jane EIFFEL"),
            pending_edit("Landmarks", " many", subject="eiffel-like towers"),
            pending_edit("Something else", " entirely"),
        ],
    )
    assert ids(list_edits(session, search="eIfFeL").items) == [c.id, b.id, a.id]
    assert ids(list_edits(session, search="  rome ").items) == [a.id]
    assert len(list_edits(session, search="").items) == 4
    assert d.id not in ids(list_edits(session, search="eiffel").items)


def test_list_edits_search_treats_like_wildcards_literally(session: Session) -> None:
    percent, plain, underscore = add_edits(
        session,
        edits=[
            pending_edit("growth was 100%", " yes"),
            pending_edit("growth was 1000", " no"),
            pending_edit("snake_case name", " x"),
        ],
    )
    assert ids(list_edits(session, search="100%").items) == [percent.id]
    assert ids(list_edits(session, search="e_c").items) == [underscore.id]
    assert plain.id not in ids(list_edits(session, search="%").items)


def test_list_edits_filters_by_creation_window(session: Session) -> None:
    edits = make_edits(session, 3)
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    for i, edit in enumerate(edits):
        edit.created_at = t0 + timedelta(days=i)
    session.flush()
    one_day = timedelta(days=1)
    # created_after is inclusive, created_before exclusive.
    assert ids(list_edits(session, created_after=t0 + one_day).items) == [edits[2].id, edits[1].id]
    assert ids(list_edits(session, created_before=t0 + one_day).items) == [edits[0].id]
    window = list_edits(session, created_after=t0, created_before=t0 + 2 * one_day)
    assert ids(window.items) == [edits[1].id, edits[0].id]
    # Another zone, same instant.
    tokyo = timezone(timedelta(hours=9))
    assert ids(list_edits(session, created_after=(t0 + 2 * one_day).astimezone(tokyo)).items) == [edits[2].id]


def test_list_edits_refuses_naive_datetimes(session: Session) -> None:
    with pytest.raises(ValueError, match="created_after must be timezone-aware"):
        list_edits(session, created_after=datetime(2024, 1, 1))


def test_list_edits_filters_by_expert(session: Session) -> None:
    edits = make_edits(session, 3)
    expert = add_expert(session, name="e1", path="/x/e1", sha256=SHA)
    set_edit_status(session, edit_ids=[edits[0].id, edits[2].id], status="applied", expert_id=expert.id)
    assert ids(list_edits(session, expert_id=expert.id).items) == [edits[2].id, edits[0].id]
    assert ids(edits_of_expert(session, expert_id=expert.id)) == [edits[0].id, edits[2].id]
    assert list_edits(session, expert_id=expert.id + 1).items == []


def test_list_edits_combines_filters(session: Session) -> None:
    a, b, c = add_edits(
        session,
        edits=[
            pending_edit("Paris is in", " Italy", subject="Paris"),
            pending_edit("Paris has", " canals", subject="Paris"),
            pending_edit("Rome has", " canals", subject="Rome"),
        ],
    )
    set_edit_status(session, edit_ids=[b.id], status=EditStatus.FAILED)
    page = list_edits(session, subject="paris", search="canals", status="failed")
    assert ids(page.items) == [b.id]
    assert list_edits(session, subject="paris", search="canals", status="pending").items == []


@pytest.mark.parametrize("total", [23, 20])
def test_list_edits_pagination_walks_every_row_exactly_once(session: Session, total: int) -> None:
    edits = make_edits(session, total)
    seen: list[int] = []
    pages = 0
    cursor = None
    while True:
        page = list_edits(session, limit=5, cursor=cursor)
        pages += 1
        assert len(page.items) <= 5
        seen += ids(page.items)
        if page.next_cursor is None:
            break
        assert len(page.items) == 5
        cursor = page.next_cursor
    assert seen == sorted(ids(edits), reverse=True)
    assert pages == -(-total // 5)  # no empty trailing page


def test_list_edits_pagination_keeps_filters_and_survives_new_rows(session: Session) -> None:
    edits = make_edits(session, 10)
    set_edit_status(session, edit_ids=ids(edits[::2]), status=EditStatus.FAILED)
    first = list_edits(session, status="failed", limit=3)
    assert ids(first.items) == [edits[8].id, edits[6].id, edits[4].id]
    make_edits(session, 3)  # newer rows do not shift the following pages
    second = list_edits(session, status="failed", limit=3, cursor=first.next_cursor)
    assert ids(second.items) == [edits[2].id, edits[0].id]
    assert second.next_cursor is None


GARBAGE_CURSORS = [
    "garbage",
    "!!!not a cursor!!!",
    "",
    "edits",
    "edits.",
    "edits.-1",
    "edits.0",
    "edits.007",
    "edits.5 ",
    "edits.5\n",
    "edits.\u0665",  # an Arabic-Indic digit: no ASCII digit
    "edits.1.5",
    "EDITS.5",
    "audit.5",
    "edits." + "9" * 190,
    "A" * 500,
    # The old base64 JSON form.
    base64.urlsafe_b64encode(json.dumps({"k": "edits", "o": "desc", "id": 5}).encode()).decode(),
]


def test_list_edits_garbage_cursor_raises_invalid_cursor(session: Session) -> None:
    make_edits(session, 3)
    for cursor in GARBAGE_CURSORS:
        with pytest.raises(InvalidCursor, match="invalid cursor") as info:
            list_edits(session, cursor=cursor)
        assert isinstance(info.value, ValueError), cursor


def test_list_edits_cursor_from_another_list_names_it(session: Session) -> None:
    with pytest.raises(InvalidCursor, match="belongs to the 'audit' list"):
        list_edits(session, cursor="audit.5")


@pytest.mark.parametrize("after_id", [2**31, 2**63, 2**64 + 1])
def test_list_edits_cursor_beyond_32_bits_is_invalid_not_a_crash(session: Session, after_id: int) -> None:
    """Ids are 32-bit in both databases: a larger one would overflow the query's parameter."""
    with pytest.raises(InvalidCursor, match=f"its id {after_id} is out of range; ids are 1 to 2147483647"):
        list_edits(session, cursor=f"edits.{after_id}")


def test_list_edits_cursor_at_the_largest_id_is_a_valid_page(session: Session) -> None:
    edits = make_edits(session, 2)
    assert ids(list_edits(session, cursor=f"edits.{2**31 - 1}").items) == ids(edits)[::-1]


def test_list_edits_rejects_limit_out_of_bounds(session: Session) -> None:
    for limit in (0, -1, 501, True, 2.5, "10", None):
        with pytest.raises(ValueError, match="limit must be an integer from 1 to 500"):
            list_edits(session, limit=limit)  # type: ignore[arg-type]


def test_list_edits_accepts_limit_bounds(session: Session) -> None:
    make_edits(session, 2)
    assert len(list_edits(session, limit=1).items) == 1
    assert len(list_edits(session, limit=500).items) == 2


def test_count_edits_by_status(session: Session) -> None:
    edits = make_edits(session, 5)
    set_edit_status(session, edit_ids=ids(edits[:2]), status=EditStatus.APPLIED)
    assert count_edits(session, status=EditStatus.PENDING) == 3
    assert count_edits(session, status="applied") == 2
    assert count_edits(session, status=EditStatus.FAILED) == 0
    assert count_edits(session) == 5
    with pytest.raises(ValueError, match="unknown status 'nope'"):
        count_edits(session, status="nope")


def test_set_edit_status_applied_stamps_applied_at_and_expert(
    session_factory: sessionmaker[Session],
) -> None:
    with session_factory() as s:
        edits = make_edits(s, 3)
        expert = add_expert(s, name="e", path="/x", sha256=SHA, status=ExpertStatus.ACTIVE)
        before = edits[0].updated_at
        changed = set_edit_status(s, edit_ids=[edits[1].id, edits[0].id], status=EditStatus.APPLIED, expert_id=expert.id)
        s.commit()
    assert ids(changed) == [edits[0].id, edits[1].id]
    with session_factory() as s:
        applied = get_edit(s, edit_id=edits[0].id)
        untouched = get_edit(s, edit_id=edits[2].id)
    assert applied is not None and untouched is not None
    assert applied.status is EditStatus.APPLIED
    assert applied.expert_id == expert.id
    assert applied.applied_at is not None and applied.applied_at.tzinfo is not None
    assert applied.updated_at >= before
    assert untouched.status is EditStatus.PENDING and untouched.applied_at is None


def test_set_edit_status_error_is_recorded_and_cleared(session: Session) -> None:
    (edit,) = make_edits(session, 1)
    set_edit_status(session, edit_ids=[edit.id], status="failed", error="loss diverged")
    assert (edit.status, edit.error) == (EditStatus.FAILED, "loss diverged")
    set_edit_status(session, edit_ids=[edit.id], status="pending")
    assert (edit.status, edit.error) == (EditStatus.PENDING, None)


def test_set_edit_status_rollback_keeps_expert_and_applied_at(session: Session) -> None:
    (edit,) = make_edits(session, 1)
    expert = add_expert(session, name="e", path="/x", sha256=SHA)
    set_edit_status(session, edit_ids=[edit.id], status="applied", expert_id=expert.id)
    applied_at = edit.applied_at
    set_edit_status(session, edit_ids=[edit.id], status=EditStatus.ROLLED_BACK)
    assert edit.status is EditStatus.ROLLED_BACK
    assert edit.expert_id == expert.id and edit.applied_at == applied_at


def test_set_edit_status_unknown_ids_change_nothing(session: Session) -> None:
    (edit,) = make_edits(session, 1)
    with pytest.raises(RecordNotFound, match=r"edits do not exist: \[998, 999\]"):
        set_edit_status(session, edit_ids=[edit.id, 999, 998], status="failed")
    assert edit.status is EditStatus.PENDING
    assert set_edit_status(session, edit_ids=[], status="failed") == []


def test_set_edit_status_rejects_unknown_status(session: Session) -> None:
    (edit,) = make_edits(session, 1)
    with pytest.raises(ValueError, match="unknown status 'finished'"):
        set_edit_status(session, edit_ids=[edit.id], status="finished")


def test_set_inferred_subject_fills_only_an_edit_without_one(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as s:
        given, bare = add_edits(
            s, edits=[pending_edit("The capital of France is", " Lyon", subject="France"), pending_edit("Who is Acme's CEO?", " Jo")]
        )
        s.commit()
        given_id, bare_id = given.id, bare.id

    with session_factory() as s:
        assert set_inferred_subject(s, edit_id=given_id, subject="capital") is None
        filled = set_inferred_subject(s, edit_id=bare_id, subject="Acme")
        assert filled is not None and filled.id == bare_id
        s.commit()
    with session_factory() as s:
        # An edit inferred once keeps its subject too.
        assert set_inferred_subject(s, edit_id=bare_id, subject="CEO") is None
        s.commit()

    with session_factory() as s:
        kept, inferred = get_edit(s, edit_id=given_id), get_edit(s, edit_id=bare_id)
        assert kept is not None and inferred is not None
        assert (kept.subject, kept.subject_source) == ("France", SubjectSource.CLIENT)
        assert (inferred.subject, inferred.subject_source) == ("Acme", SubjectSource.INFERRED)
        assert [e.id for e in list_edits(s, subject="acme").items] == [bare_id]
