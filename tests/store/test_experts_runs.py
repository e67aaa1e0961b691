"""Experts, training runs and the active-stack version."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.domain import ExpertStatus, RunStatus, RunTrigger
from app.store import (
    Base,
    Expert,
    InvalidCursor,
    InvalidTransition,
    RecordNotFound,
    active_run,
    add_expert,
    bump_stack_version,
    create_run,
    finish_run,
    get_expert,
    get_expert_by_name,
    get_run,
    get_stack_version,
    is_second_active_run,
    list_audit,
    list_experts,
    list_runs,
    make_engine,
    set_expert_status,
    start_run,
    update_run_progress,
)
from tests.pg import temporary_database_url

SHA = "0123456789abcdef" * 4


def expert(session: Session, name: str, **kwargs: object) -> Expert:
    return add_expert(session, name=name, path=f"/data/experts/{name}", sha256=SHA, **kwargs)


# --- experts ---------------------------------------------------------------------------------


def test_add_expert_round_trips_every_field(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as s:
        run = create_run(s, trigger="manual", actor="alice")
        added = expert(
            s,
            "expert-0001",
            edit_count=12,
            training_run_id=run.id,
            final_loss=0.031,
            steps=40,
            metrics={"rel": 1.0, "gen": 0.8, "loc": [1, 1, 0.99]},
        )
        s.commit()
    with session_factory() as s:
        loaded = get_expert(s, expert_id=added.id)
        by_name = get_expert_by_name(s, name="expert-0001")
    assert loaded is not None and by_name is not None and by_name.id == loaded.id
    assert (loaded.path, loaded.sha256, loaded.edit_count) == ("/data/experts/expert-0001", SHA, 12)
    assert (loaded.training_run_id, loaded.final_loss, loaded.steps) == (run.id, 0.031, 40)
    assert loaded.metrics == {"rel": 1.0, "gen": 0.8, "loc": [1, 1, 0.99]}
    assert loaded.status is ExpertStatus.INACTIVE
    assert loaded.created_at.tzinfo is not None
    assert loaded.activated_at is None and loaded.deactivated_at is None


def test_get_expert_misses_return_none(session: Session) -> None:
    assert get_expert(session, expert_id=77) is None
    assert get_expert_by_name(session, name="nope") is None


def test_add_expert_validates_arguments(session: Session) -> None:
    expert(session, "taken")
    cases = [
        ({"name": "taken"}, "an expert named 'taken' already exists"),
        ({"name": "../escape"}, "invalid expert name '../escape'"),
        ({"name": ""}, "invalid expert name ''"),
        ({"name": "ok", "sha256": "ABC"}, "sha256 must be 64 lowercase hex"),
        ({"name": "ok", "status": "retired"}, "unknown status 'retired'; one of \\['active', 'inactive', 'quarantined'\\]"),
    ]
    for overrides, message in cases:
        kwargs = {"name": "ok", "path": "/p", "sha256": SHA} | overrides
        with pytest.raises(ValueError, match=message):
            add_expert(session, **kwargs)  # type: ignore[arg-type]
    assert [e.name for e in list_experts(session)] == ["taken"]


def test_expert_name_is_unique_in_the_database(session: Session) -> None:
    expert(session, "dup")
    session.add(Expert(name="dup", path="/p", sha256=SHA, status="inactive", edit_count=0))
    with pytest.raises(IntegrityError):
        session.flush()


def test_list_experts_filters_by_status_oldest_first(session: Session) -> None:
    a = expert(session, "a", status=ExpertStatus.ACTIVE)
    b = expert(session, "b")
    c = expert(session, "c", status="active")
    assert [e.id for e in list_experts(session)] == [a.id, b.id, c.id]
    assert [e.id for e in list_experts(session, status=ExpertStatus.ACTIVE)] == [a.id, c.id]
    assert [e.id for e in list_experts(session, status="inactive")] == [b.id]
    with pytest.raises(ValueError, match="unknown status 'gone'"):
        list_experts(session, status="gone")


def test_set_expert_status_stamps_times_and_bumps_stack_version(session: Session) -> None:
    e = expert(session, "e")
    assert get_stack_version(session) == 0  # registering an inactive expert changes no stack
    set_expert_status(session, expert_id=e.id, status=ExpertStatus.ACTIVE)
    assert e.status is ExpertStatus.ACTIVE and e.activated_at is not None
    assert get_stack_version(session) == 1
    set_expert_status(session, expert_id=e.id, status="active")  # no change, no bump
    assert get_stack_version(session) == 1
    set_expert_status(session, expert_id=e.id, status=ExpertStatus.INACTIVE)
    assert e.status is ExpertStatus.INACTIVE
    assert e.deactivated_at is not None and e.deactivated_at >= e.activated_at
    assert get_stack_version(session) == 2
    expert(session, "born-active", status=ExpertStatus.ACTIVE)
    assert get_stack_version(session) == 3


def test_set_expert_status_unknown_expert(session: Session) -> None:
    with pytest.raises(RecordNotFound, match="expert 5 does not exist"):
        set_expert_status(session, expert_id=5, status="active")


# --- stack version ---------------------------------------------------------------------------


def test_stack_version_bumps_are_visible_to_other_sessions(
    session_factory: sessionmaker[Session],
) -> None:
    with session_factory() as s:
        assert get_stack_version(s) == 0
        assert bump_stack_version(s) == 1
        assert bump_stack_version(s) == 2
        s.commit()
    with session_factory() as s:
        assert get_stack_version(s) == 2
        bump_stack_version(s)
        s.rollback()  # an uncommitted bump is not kept
    with session_factory() as s:
        assert get_stack_version(s) == 2


def test_stack_version_works_on_a_schema_without_the_seed_row(backend: str, tmp_path: Path) -> None:
    """Other tests may build the schema with metadata.create_all(), which inserts no row."""
    with temporary_database_url(backend, tmp_path, migrated=False) as url:
        engine: Engine = make_engine(url)
        try:
            Base.metadata.create_all(engine)
            with Session(engine) as s:
                assert get_stack_version(s) == 0
                assert bump_stack_version(s) == 1
                assert bump_stack_version(s) == 2
                s.commit()
            with Session(engine) as s:
                assert get_stack_version(s) == 2
        finally:
            engine.dispose()


# --- training runs ---------------------------------------------------------------------------


def test_run_lifecycle_queued_running_succeeded(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as s:
        run = create_run(s, trigger=RunTrigger.MANUAL, actor="alice", edits_total=4)
        assert (run.status, run.trigger, run.actor) == (RunStatus.QUEUED, RunTrigger.MANUAL, "alice")
        assert (run.edits_total, run.edits_done, run.experts_created) == (4, 0, 0)
        assert run.started_at is None and run.finished_at is None
        start_run(s, run_id=run.id, edits_total=5)
        assert run.status is RunStatus.RUNNING and run.started_at is not None
        first_beat = run.heartbeat_at
        assert first_beat is not None
        update_run_progress(s, run_id=run.id, edits_done=3, current_loss=0.25)
        assert run.heartbeat_at is not None and run.heartbeat_at >= first_beat
        update_run_progress(s, run_id=run.id, current_loss=0.125, heartbeat=False)
        finish_run(s, run_id=run.id, status=RunStatus.SUCCEEDED, experts_created=2)
        s.commit()
    with session_factory() as s:
        done = get_run(s, run_id=run.id)
    assert done is not None
    assert done.status is RunStatus.SUCCEEDED
    assert (done.edits_total, done.edits_done, done.current_loss, done.experts_created) == (5, 3, 0.125, 2)
    assert done.finished_at is not None and done.finished_at >= done.started_at
    assert done.error is None
    assert all(t.tzinfo is not None for t in (done.created_at, done.started_at, done.finished_at))


def test_run_transitions_are_checked(session: Session) -> None:
    run = create_run(session, trigger="schedule", actor="worker")
    with pytest.raises(InvalidTransition, match="cannot update progress of training run .*: it is queued"):
        update_run_progress(session, run_id=run.id, edits_done=1)
    with pytest.raises(ValueError, match="a run cannot finish as 'running'"):
        finish_run(session, run_id=run.id, status=RunStatus.RUNNING)
    finish_run(session, run_id=run.id, status="failed", error="CUDA out of memory")
    assert (run.status, run.error) == (RunStatus.FAILED, "CUDA out of memory")
    with pytest.raises(InvalidTransition, match="cannot start training run .*: it is failed"):
        start_run(session, run_id=run.id)
    with pytest.raises(InvalidTransition, match="cannot finish training run"):
        finish_run(session, run_id=run.id, status="succeeded")
    with pytest.raises(RecordNotFound, match="training run 999 does not exist"):
        start_run(session, run_id=999)
    assert get_run(session, run_id=999) is None


def test_create_run_validates_arguments(session: Session) -> None:
    with pytest.raises(ValueError, match="unknown trigger 'cron'; one of \\['manual', 'schedule'\\]"):
        create_run(session, trigger="cron", actor="x")


def test_active_run_is_the_one_queued_or_running_run(session: Session) -> None:
    assert active_run(session) is None
    first = create_run(session, trigger="manual", actor="a")
    assert active_run(session) is first
    start_run(session, run_id=first.id)
    assert active_run(session) is first
    finish_run(session, run_id=first.id, status="succeeded")
    assert active_run(session) is None
    second = create_run(session, trigger="schedule", actor="b")
    assert active_run(session) is second
    finish_run(session, run_id=second.id, status="interrupted")
    assert active_run(session) is None


@pytest.mark.parametrize("first_status", [RunStatus.QUEUED, RunStatus.RUNNING])
def test_the_database_refuses_a_second_active_run(session_factory: sessionmaker[Session], first_status: RunStatus) -> None:
    with session_factory() as s:
        first = create_run(s, trigger="manual", actor="a")
        if first_status is RunStatus.RUNNING:
            start_run(s, run_id=first.id)
        s.commit()

    with session_factory() as s:
        with pytest.raises(IntegrityError) as refused:
            create_run(s, trigger="schedule", actor="b")
            s.commit()
        s.rollback()
        assert is_second_active_run(refused.value)
        # Once the first run is over, a new one is accepted.
        finish_run(s, run_id=first.id, status="failed", error="x")
        second = create_run(s, trigger="schedule", actor="b")
        s.commit()
        assert active_run(s) is second
        assert [r.status for r in list_runs(s).items] == [RunStatus.QUEUED, RunStatus.FAILED]


def test_of_two_processes_starting_one_queued_run_only_one_starts_it(
    session_factory: sessionmaker[Session],
) -> None:
    with session_factory() as s:
        run_id = create_run(s, trigger="manual", actor="a").id
        s.commit()
    with session_factory() as first, session_factory() as second:
        seen = get_run(second, run_id=run_id)  # held: the session keeps what it read
        assert seen is not None and seen.status is RunStatus.QUEUED
        start_run(first, run_id=run_id)
        first.commit()

        with pytest.raises(InvalidTransition, match=f"cannot start training run {run_id}: it is running"):
            start_run(second, run_id=run_id)
        second.rollback()


def test_list_runs_newest_first_with_pagination_and_status(session: Session) -> None:
    runs = []
    for i in range(7):  # one active run at a time: each finishes before the next is created
        runs.append(create_run(session, trigger="schedule", actor="worker"))
        finish_run(session, run_id=runs[-1].id, status="failed" if i % 3 == 0 else "succeeded")
    page1 = list_runs(session, limit=4)
    page2 = list_runs(session, limit=4, cursor=page1.next_cursor)
    assert [r.id for r in page1.items + page2.items] == [r.id for r in reversed(runs)]
    assert page2.next_cursor is None
    failed = list_runs(session, status=RunStatus.FAILED)
    assert [r.id for r in failed.items] == [runs[6].id, runs[3].id, runs[0].id]
    with pytest.raises(InvalidCursor, match="belongs to the 'training_runs' list, not 'audit'"):
        list_audit(session, cursor=page1.next_cursor)
