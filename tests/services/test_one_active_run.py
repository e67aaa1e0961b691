"""One active training run across replicas: two connection pools, and two real processes, on one
database racing to create a run get exactly one, on SQLite and on PostgreSQL."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app import store
from app.config import Settings
from app.domain import AuditAction, RunStatus, RunTrigger
from app.errors import NothingToTrain, RunAlreadyActive
from app.services import runs, training
from tests.pg import DATABASE_BACKENDS, temporary_database_url

TRIALS = 12
SETTINGS = Settings(_env_file=None, worker_max_batch=8)


@pytest.fixture(params=DATABASE_BACKENDS)
def replicas(request, tmp_path: Path) -> Iterator[list[sessionmaker[Session]]]:
    """Two "replicas": separate engines (connection pools) on the same database."""
    with temporary_database_url(request.param, tmp_path) as url:
        engines = [store.make_engine(url) for _ in range(2)]
        yield [store.make_session_factory(e) for e in engines]
        for engine in engines:
            engine.dispose()


def race(*calls: Callable[[], object]) -> list[object]:
    """Run the calls at the same moment in threads; each result, or the exception it raised."""
    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait(timeout=60)
        try:
            results[i] = calls[i]()
        except Exception as exc:  # reported below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a trigger never returned"
    return results


def add_pending(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        store.add_edits(session, edits=[store.pending_edit("The capital of France is", "Rome")])
        session.commit()


def finish_active(sessions: sessionmaker[Session]) -> store.TrainingRun:
    with sessions() as session:
        active = store.active_run(session)
        assert active is not None
        store.finish_run(session, run_id=active.id, status=RunStatus.SUCCEEDED)
        session.commit()
        return active


def count_runs(sessions: sessionmaker[Session]) -> tuple[int, int]:
    with sessions() as session:
        runs = session.scalar(select(func.count()).select_from(store.TrainingRun))
        created = len(store.list_audit(session, action=AuditAction.RUN_CREATED, limit=store.MAX_LIMIT).items)
        return runs, created


def trigger(sessions: sessionmaker[Session], actor: str) -> Callable[[], store.TrainingRun]:
    def call() -> store.TrainingRun:
        with sessions() as session:
            return runs.trigger_run(session, settings=SETTINGS, actor=actor)

    return call


def test_concurrent_triggers_on_two_replicas_accept_exactly_one(replicas):
    a, b = replicas
    add_pending(a)

    for trial in range(TRIALS):
        results = race(trigger(a, "alice"), trigger(b, "bob"))

        accepted = [r for r in results if isinstance(r, store.TrainingRun)]
        refused = [r for r in results if isinstance(r, RunAlreadyActive)]
        assert len(accepted) == 1 and len(refused) == 1, (trial, results)
        assert refused[0].run_id == accepted[0].id  # the 409 names the run that won
        assert f"/v1/training-runs/{accepted[0].id}" in refused[0].message
        assert finish_active(b).id == accepted[0].id

    assert count_runs(a) == (TRIALS, TRIALS)  # one run and one training_run.created per trial


def test_concurrent_worker_starts_on_two_replicas_start_exactly_one(replicas):
    a, b = replicas

    def start(sessions: sessionmaker[Session]) -> Callable[[], training.StartedRun | None]:
        return lambda: training.start_run(sessions, settings=SETTINGS, trigger=RunTrigger.SCHEDULE, actor="scheduler")

    for trial in range(TRIALS):
        add_pending(a)
        results = race(start(a), start(b), trigger(b, "carol"))

        started = [r for r in results[:2] if isinstance(r, training.StartedRun)]
        assert len(started) <= 1 and results[:2].count(None) >= 1, (trial, results)
        run_id = finish_active(a).id  # the one run of this trial, started or still queued
        assert [s.run_id for s in started] in ([], [run_id]), (trial, results)
        # The API trigger lost (a 409 naming the run, or nothing left pending once a worker
        # claimed the edit) or won (and no worker created another run).
        if isinstance(results[2], RunAlreadyActive | NothingToTrain):
            assert started, (trial, results)
            if isinstance(results[2], RunAlreadyActive):
                assert results[2].run_id == run_id
        else:
            assert isinstance(results[2], store.TrainingRun), (trial, results)
            assert results[2].id == run_id

    runs, created = count_runs(a)
    assert runs == created == TRIALS


def _replica(url: str, index: int, barrier, results, trials: int) -> None:
    """One replica process: trigger at the barrier, report, and (replica 0) end the run."""
    database = store.make_engine(url)
    sessions = store.make_session_factory(database)
    try:
        for trial in range(trials):
            barrier.wait(60)
            try:
                run = trigger(sessions, f"replica-{index}")()
                results.put((trial, "accepted", run.id))
            except RunAlreadyActive as exc:
                results.put((trial, "refused", exc.run_id))
            except Exception as exc:  # reported to the test process
                results.put((trial, "error", repr(exc)))
            barrier.wait(60)
            if index == 0:
                finish_active(sessions)
            barrier.wait(60)
    finally:
        database.dispose()


@pytest.mark.parametrize("backend", DATABASE_BACKENDS)
def test_two_processes_triggering_at_once_accept_exactly_one(backend: str, tmp_path: Path):
    """Real processes: no lock in memory can be shared, only the database decides."""
    context = multiprocessing.get_context("fork")
    with temporary_database_url(backend, tmp_path) as url:
        database = store.make_engine(url)
        add_pending(store.make_session_factory(database))
        database.dispose()  # nothing open while forking
        barrier, results = context.Barrier(2), context.Queue()
        processes = [context.Process(target=_replica, args=(url, i, barrier, results, TRIALS)) for i in range(2)]
        for process in processes:
            process.start()
        outcomes = [results.get(timeout=120) for _ in range(2 * TRIALS)]
        for process in processes:
            process.join(timeout=60)
        assert [p.exitcode for p in processes] == [0, 0]

    for trial in range(TRIALS):
        kinds = sorted((kind, run_id) for t, kind, run_id in outcomes if t == trial)
        assert [k for k, _ in kinds] == ["accepted", "refused"], (trial, kinds)
        assert kinds[0][1] == kinds[1][1]  # the 409 names the run that was accepted
