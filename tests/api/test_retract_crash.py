"""A retraction survives the process dying at any step (simulated here by an exception no
handler catches, on SQLite and PostgreSQL; tests/test_restart.py kills a real server with -9):
after a restart the edit is still retracting with the old expert serving, or the swap is whole."""

from __future__ import annotations

from contextlib import contextmanager

import pytest

from app.services import retractions, training
from app.services.stack import LiveStack
from tests.api.support import FOX, FRANCE, generate, running_app, runtime_of, submit, worker_for


class Killed(BaseException):
    """The process dies here: no `except Exception` runs, no commit happens."""


def die(*args, **kwargs):
    raise Killed


def state(client, france: int, fox: int) -> tuple:
    experts = client.get("/v1/experts").json()["items"]
    return (
        client.get(f"/v1/edits/{france}").json()["status"],
        client.get(f"/v1/edits/{fox}").json()["expert_id"],
        [(e["id"], e["status"]) for e in experts],
        client.get("/readyz").json()["active_experts"],
    )


@pytest.fixture
def retracting(db_settings, shared_engine):
    """FRANCE and FOX applied in one expert, then FRANCE's retraction requested."""
    with running_app(db_settings, shared_engine) as client:
        base = generate(client, FRANCE["prompt"])["text"]
        france, fox = submit(client, FRANCE, FOX)
        worker_for(client).run_once()
        [expert] = client.get("/v1/experts").json()["items"]
        assert client.delete(f"/v1/edits/{france}").status_code == 202
    return db_settings, shared_engine, base, france, fox, expert


@contextmanager
def restarted(settings, engine):
    """A new app on the same database, recovering as the trainer does at start-up."""
    with running_app(settings, engine) as client:
        training.recover(runtime_of(client).session_factory)
        yield client


def finish(client, base: str, france: int, fox: int) -> None:
    """The trainer carries the retraction out: replaced, retracted, one expert.replaced."""
    assert worker_for(client).trainer.retract_pending() == 1
    old, new = client.get("/v1/experts").json()["items"]
    assert (old["status"], old["replaced_by_id"], new["status"]) == ("inactive", new["id"], "active")
    assert state(client, france, fox) == ("retracted", new["id"], [(old["id"], "inactive"), (new["id"], "active")], [new["name"]])
    assert generate(client, FRANCE["prompt"])["text"] == base
    assert generate(client, FOX["prompt"])["expert"]["id"] == new["id"]
    assert len(client.get("/v1/audit", params={"action": "expert.replaced"}).json()["items"]) == 1


@pytest.mark.parametrize("step", ["training", "swap"])
def test_a_crash_before_the_swap_commits_leaves_the_old_expert_serving(retracting, monkeypatch, step):
    settings, engine, base, france, fox, old = retracting
    with running_app(settings, engine) as client, monkeypatch.context() as patch:
        worker = worker_for(client)
        if step == "training":
            patch.setattr(worker.engine, "build_expert", die)
        else:  # trained and saved, inside the swap transaction: nothing is committed
            patch.setattr(retractions, "_mark_retracted", die)
        with pytest.raises(Killed):
            worker.trainer.retract_pending()

    with restarted(settings, engine) as client:
        # Nothing half done: the edit is still retracting and the old expert still serves it.
        assert state(client, france, fox) == ("retracting", old["id"], [(old["id"], "active")], [old["name"]])
        assert generate(client, FRANCE["prompt"])["expert"]["id"] == old["id"]
        finish(client, base, france, fox)


def test_a_crash_after_the_swap_commits_serves_the_replacement_on_restart(retracting, monkeypatch):
    settings, engine, base, france, fox, old = retracting
    with running_app(settings, engine) as client, monkeypatch.context() as patch:
        worker = worker_for(client)
        patch.setattr(LiveStack, "sync", die)  # committed, not yet swapped in this process
        with pytest.raises(Killed):
            worker.trainer.retract_pending()

    with restarted(settings, engine) as client:
        _, new = client.get("/v1/experts").json()["items"]
        assert state(client, france, fox) == ("retracted", new["id"], [(old["id"], "inactive"), (new["id"], "active")], [new["name"]])
        assert generate(client, FRANCE["prompt"])["text"] == base
        assert worker_for(client).trainer.retract_pending() == 0  # nothing left to do
