"""The training worker: batches, limits, the schedule, the manual wake-up, a clean stop, and the
PostgreSQL lock that keeps a single trainer."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app import store
from app.domain import AuditAction, EditStatus, RunStatus
from app.engine.engine import Engine
from app.services import training
from app.worker import TrainingWorker
from tests.api.support import (
    FOX,
    FRANCE,
    UNRELATED,
    fresh_sessions,
    generate,
    running_app,
    shared_engine,
    submit,
    tiny_model_dir,
    tiny_settings,
    worker_for,
)
from tests.pg import temporary_database_url

__all__ = ["shared_engine", "tiny_model_dir"]

FACTS = [{"prompt": f"Fact {word} is", "target": word} for word in ("alpha", "beta", "gamma", "delta", "omega")]


def wait_for(condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def statuses(client, ids) -> set[str]:
    return {client.get(f"/v1/edits/{i}").json()["status"] for i in ids}


def test_one_expert_per_batch_stacked_oldest_first(tiny_model_dir, shared_engine, tmp_path):
    settings = tiny_settings(tiny_model_dir, tmp_path / "data", edits_per_expert=2, planning=False)
    with running_app(settings, shared_engine) as client:
        ids = submit(client, *FACTS)

        run_id = worker_for(client).run_once()

        experts = client.get("/v1/experts").json()["items"]
        assert [e["name"] for e in experts] == [f"expert-r{run_id}-b{i}" for i in range(3)]
        assert [e["edit_count"] for e in experts] == [2, 2, 1]
        assert statuses(client, ids) == {"applied"}
        assert client.get("/readyz").json()["active_experts"] == [e["name"] for e in experts]
        run = client.get(f"/v1/training-runs/{run_id}").json()
        assert run["experts_created"] == 3 and run["edits_done"] == 5
        assert sorted(run["expert_ids"]) == [e["id"] for e in experts]


def test_a_run_claims_at_most_worker_max_batch(tiny_model_dir, shared_engine, tmp_path):
    settings = tiny_settings(tiny_model_dir, tmp_path / "data", worker_max_batch=2)
    with running_app(settings, shared_engine) as client:
        ids = submit(client, *FACTS[:3])
        worker = worker_for(client)

        worker.run_once()
        assert [client.get(f"/v1/edits/{i}").json()["status"] for i in ids] == ["applied", "applied", "pending"]
        worker.run_once()
        assert statuses(client, ids) == {"applied"}
        assert len(client.get("/v1/training-runs").json()["items"]) == 2


def test_run_once_runs_the_queued_run_first(tiny_model_dir, shared_engine, tmp_path):
    settings = tiny_settings(tiny_model_dir, tmp_path / "data")
    with running_app(settings, shared_engine) as client:
        submit(client, FRANCE)
        queued = client.post("/v1/training-runs", headers={"X-Actor": "ivan"}).json()

        run_id = worker_for(client).run_once()

        assert run_id == queued["id"]
        runs = client.get("/v1/training-runs").json()["items"]
        assert [(r["id"], r["status"], r["actor"]) for r in runs] == [(queued["id"], "succeeded", "ivan")]


def test_the_schedule_waits_for_enough_pending_edits(tiny_model_dir, shared_engine, tmp_path):
    settings = tiny_settings(
        tiny_model_dir,
        tmp_path / "data",
        worker_enabled=True,
        worker_interval_s=0.2,
        worker_poll_interval_s=0.1,
        worker_min_pending=2,
    )
    with running_app(settings, shared_engine) as client:
        [first] = submit(client, FRANCE)
        time.sleep(1.0)  # five schedule ticks
        assert client.get(f"/v1/edits/{first}").json()["status"] == "pending"
        assert client.get("/v1/training-runs").json()["items"] == []

        [second] = submit(client, FOX)

        wait_for(lambda: statuses(client, [first, second]) == {"applied"}, what="the scheduled run")
        [run] = client.get("/v1/training-runs").json()["items"]
        assert (run["trigger"], run["actor"], run["status"]) == ("schedule", "scheduler", "succeeded")
        assert client.get("/readyz").json()["worker"] == "idle"


def test_a_manual_trigger_wakes_the_worker_at_once(tiny_model_dir, shared_engine, tmp_path):
    settings = tiny_settings(tiny_model_dir, tmp_path / "data", worker_enabled=True, worker_interval_s=3600)
    with running_app(settings, shared_engine) as client:
        [edit_id] = submit(client, FRANCE)

        run = client.post("/v1/training-runs").json()

        wait_for(lambda: client.get(f"/v1/training-runs/{run['id']}").json()["status"] == "succeeded", what="the triggered run")
        assert client.get(f"/v1/edits/{edit_id}").json()["status"] == "applied"
        assert generate(client, FRANCE["prompt"])["expert"] is not None


def test_the_worker_trains_in_a_thread_while_generation_is_served(tiny_model_dir, shared_engine, tmp_path, monkeypatch):
    settings = tiny_settings(tiny_model_dir, tmp_path / "data", worker_enabled=True, worker_interval_s=3600)
    in_training, release = threading.Event(), threading.Event()
    original = shared_engine.build_expert

    def held_build(name, edits, progress=None):
        in_training.set()
        assert release.wait(30)
        return original(name, edits, progress=progress)

    monkeypatch.setattr(shared_engine, "build_expert", held_build)
    with running_app(settings, shared_engine) as client:
        base = generate(client, UNRELATED)
        submit(client, FRANCE)
        run = client.post("/v1/training-runs").json()
        try:
            assert in_training.wait(30)
            started = time.monotonic()
            during = [generate(client, UNRELATED) for _ in range(3)]
            assert time.monotonic() - started < 20
            assert client.get(f"/v1/training-runs/{run['id']}").json()["status"] == "running"
            assert client.get("/readyz").json()["worker"] == "training"
            assert all(d["text"] == base["text"] for d in during)
        finally:
            release.set()
        wait_for(lambda: client.get(f"/v1/training-runs/{run['id']}").json()["status"] == "succeeded", what="the run to finish")


def test_shutdown_interrupts_a_run_and_requeues_its_edits(tiny_model_dir, shared_engine, tmp_path, monkeypatch):
    settings = tiny_settings(tiny_model_dir, tmp_path / "data", worker_enabled=True, worker_interval_s=3600)
    in_training = threading.Event()

    def endless_build(name, edits, progress=None):
        for step in itertools.count(1):  # "trains" until the worker's progress hook stops it
            in_training.set()
            progress(step, 1.0 / step)
            time.sleep(0.01)

    monkeypatch.setattr(shared_engine, "build_expert", endless_build)
    with running_app(settings, shared_engine) as client:
        ids = submit(client, FRANCE, FOX)
        run_id = client.post("/v1/training-runs").json()["id"]
        assert in_training.wait(30)
        wait_for(lambda: client.get(f"/v1/training-runs/{run_id}").json()["current_loss"] is not None, what="a progress write")
    # The app has shut down: the run ended cleanly and nothing is lost.
    sessions = fresh_sessions(settings)
    with sessions() as session:
        run = store.get_run(session, run_id=run_id)
        assert run.status is RunStatus.INTERRUPTED and "shutting down" in run.error
        assert {store.get_edit(session, edit_id=i).status for i in ids} == {EditStatus.PENDING}
        requeued = store.list_audit(session, action=AuditAction.EDIT_REQUEUED).items
        assert sorted(e.edit_id for e in requeued) == sorted(ids)
        assert len(store.list_audit(session, action=AuditAction.RUN_INTERRUPTED).items) == 1
    sessions.kw["bind"].dispose()


def test_a_run_whose_expert_cannot_be_registered_leaves_no_folder(tiny_model_dir, shared_engine, tmp_path, monkeypatch):
    settings = tiny_settings(tiny_model_dir, tmp_path / "data")

    def database_gone(*args, **kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(training, "register_expert", database_gone)
    with running_app(settings, shared_engine) as client:
        [edit_id] = submit(client, FRANCE)

        run_id = worker_for(client).run_once()

        run = client.get(f"/v1/training-runs/{run_id}").json()
        assert run["status"] == "failed" and "went away" in run["error"]
        assert client.get(f"/v1/edits/{edit_id}").json()["status"] == "failed"
        assert not (shared_engine.experts_dir / f"expert-r{run_id}-b0").exists()


def test_the_trainer_prunes_old_orphaned_folders_at_start_up(tiny_model_dir, shared_engine, tmp_path):
    settings = tiny_settings(tiny_model_dir, tmp_path / "data", worker_enabled=True, worker_interval_s=3600)
    orphaned, fresh = settings.experts_dir / "expert-r41-b0", settings.experts_dir / "expert-r42-b0"
    for folder in (orphaned, fresh):
        folder.mkdir(parents=True)
        (folder / "weights.safetensors").write_bytes(b"left by a crash")
    hours_ago = time.time() - 7200
    for path in (orphaned, orphaned / "weights.safetensors"):
        os.utime(path, (hours_ago, hours_ago))

    with running_app(settings, shared_engine) as client:
        assert not orphaned.exists() and fresh.exists()
        [event] = client.get("/v1/audit", params={"action": "expert_files.pruned"}).json()["items"]
        assert (event["actor"], event["payload"]["path"]) == ("system", "experts/expert-r41-b0")


@pytest.fixture
def two_postgres_trainers(tiny_model_dir, shared_engine: Engine, tmp_path: Path) -> Iterator[tuple[TrainingWorker, TrainingWorker]]:
    """Two workers, each with its own connection pool, on one fresh PostgreSQL database."""
    with temporary_database_url("postgresql", tmp_path) as url:
        settings = tiny_settings(tiny_model_dir, tmp_path / "data", database_url=url)
        first_db, second_db = store.make_engine(url), store.make_engine(url)
        first = TrainingWorker(settings, store.make_session_factory(first_db), shared_engine)
        second = TrainingWorker(settings, store.make_session_factory(second_db), shared_engine)
        try:
            yield first, second
        finally:
            first.release_trainer_role()
            second.release_trainer_role()
            first_db.dispose()
            second_db.dispose()


@pytest.mark.postgres
def test_one_trainer_per_postgres_schema(two_postgres_trainers):
    first, second = two_postgres_trainers
    assert first.acquire_trainer_role() is True
    assert first.acquire_trainer_role() is True  # idempotent for the holder
    assert second.acquire_trainer_role() is False
    first.release_trainer_role()
    assert second.acquire_trainer_role() is True


@pytest.mark.postgres
def test_a_released_trainer_lock_is_free_before_its_session_ends(two_postgres_trainers, monkeypatch):
    """release() unlocks on the server: the lock never waits for the server to notice that the
    holder's session is gone (here it never goes)."""
    first, second = two_postgres_trainers
    assert first.acquire_trainer_role() is True
    held = first.trainer_lock._connection
    assert held is not None
    with monkeypatch.context() as patch:
        patch.setattr(held, "invalidate", lambda *a, **k: None)
        patch.setattr(held, "close", lambda *a, **k: None)
        first.release_trainer_role()
    assert second.acquire_trainer_role() is True
    held.invalidate()
    held.close()


def test_sqlite_needs_no_trainer_lock(tiny_model_dir, shared_engine, tmp_path):
    settings = tiny_settings(tiny_model_dir, tmp_path / "data")
    database = store.make_engine(settings.resolved_database_url)
    worker = TrainingWorker(settings, store.make_session_factory(database), shared_engine)
    assert worker.acquire_trainer_role() is True
    database.dispose()
