"""Two API replicas on one database: POST /v1/training-runs racing on both is accepted once, and
the loser's answer is a 409 naming the winner (two real processes: tests/services/
test_one_active_run.py)."""

from __future__ import annotations

import threading

from app import store
from app.config import Settings
from app.engine.engine import Engine
from tests.api.support import FRANCE, running_app, runtime_of, submit

TRIALS = 10


def test_two_replicas_triggering_at_once_accept_one_run(db_settings: Settings, shared_engine: Engine):
    with running_app(db_settings, shared_engine) as a, running_app(db_settings, shared_engine) as b:
        submit(a, FRANCE)  # stays pending: no worker runs in these apps
        for trial in range(TRIALS):
            barrier = threading.Barrier(2)
            responses = {}

            def trigger(name, client, barrier=barrier, responses=responses):  # this trial's
                barrier.wait(timeout=60)
                responses[name] = client.post("/v1/training-runs", headers={"X-Actor": name})

            threads = [threading.Thread(target=trigger, args=item) for item in (("a", a), ("b", b))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)

            statuses = sorted(r.status_code for r in responses.values())
            assert statuses == [202, 409], (trial, {k: r.text for k, r in responses.items()})
            [accepted] = [r.json() for r in responses.values() if r.status_code == 202]
            [refused] = [r for r in responses.values() if r.status_code == 409]
            assert refused.json()["error"]["type"] == "run_already_active"
            assert refused.headers["Location"] == f"/v1/training-runs/{accepted['id']}"
            with runtime_of(b).session_factory() as session:  # the run ends; the next trial
                store.finish_run(session, run_id=accepted["id"], status="failed", error="test")
                session.commit()

        runs = a.get("/v1/training-runs", params={"limit": 100}).json()["items"]
        assert len(runs) == TRIALS
