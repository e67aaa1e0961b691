"""Nothing is lost across restarts: the same active stack and answers after a clean stop, edits
requeued and trained after kill -9 mid-training, and a bad expert file quarantined (the rest
serves, the server starts) until the file is restored."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from app.engine.engine import Engine
from tests.api.support import (
    FOX,
    FRANCE,
    UNRELATED,
    assert_error,
    generate,
    running_app,
    runtime_of,
    submit,
    tiny_model_dir,
    tiny_settings,
    worker_for,
)

__all__ = ["tiny_model_dir"]

REPO = Path(__file__).resolve().parents[1]
PROMPTS = (FRANCE["prompt"], FOX["prompt"], UNRELATED)


def fresh_app(settings: Settings):
    """A new app with its own newly loaded engine: experts come back from SQL rows + files."""
    return running_app(settings, Engine.from_settings(settings))


def answers(client) -> dict[str, tuple[str, str | None]]:
    out = {}
    for prompt in PROMPTS:
        g = generate(client, prompt)
        out[prompt] = (g["text"], None if g["expert"] is None else g["expert"]["name"])
    return out


@pytest.fixture
def trained(tiny_model_dir: Path, tmp_path: Path):
    """A data dir with two experts (one deactivated) and the answers recorded before shutdown."""
    settings = tiny_settings(tiny_model_dir, tmp_path / "data")
    with fresh_app(settings) as client:
        submit(client, FRANCE)
        worker = worker_for(client)
        worker.run_once()
        submit(client, FOX)
        worker.run_once()
        first, second = client.get("/v1/experts").json()["items"]
        client.post(f"/v1/experts/{first['id']}/deactivate")
        state = {
            "answers": answers(client),
            "active": client.get("/readyz").json()["active_experts"],
            "edits": client.get("/v1/edits").json()["items"],
            "experts": client.get("/v1/experts").json()["items"],
        }
    assert state["active"] == [second["name"]]
    return settings, state


def test_restart_rebuilds_the_same_stack_and_answers(trained):
    settings, before = trained

    with fresh_app(settings) as client:
        assert client.get("/readyz").json()["active_experts"] == before["active"]
        assert answers(client) == before["answers"]
        assert client.get("/v1/edits").json()["items"] == before["edits"]
        assert client.get("/v1/experts").json()["items"] == before["experts"]
        # The deactivated expert can still be restored from its files after the restart.
        first = before["experts"][0]
        assert client.post(f"/v1/experts/{first['id']}/activate").status_code == 200
        assert generate(client, FRANCE["prompt"])["expert"]["name"] == first["name"]


def load_failures(client) -> list[dict]:
    return client.get("/v1/audit", params={"action": "expert.load_failed"}).json()["items"]


def test_a_corrupt_expert_file_is_quarantined_at_start_up_and_the_rest_serves(trained):
    settings, before = trained
    first, second = before["experts"]
    with fresh_app(settings) as client:  # both experts active
        assert client.post(f"/v1/experts/{first['id']}/activate").status_code == 200
        both = answers(client)
    weights = settings.experts_dir / second["name"] / "weights.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))

    with fresh_app(settings) as client:  # starts: no crash loop
        ready = client.get("/readyz")

        assert ready.status_code == 200
        body = ready.json()
        assert body["status"] == "degraded" and body["active_experts"] == [first["name"]]
        [quarantined] = body["quarantined_experts"]
        assert (quarantined["id"], quarantined["name"]) == (second["id"], second["name"])
        assert quarantined["path"] == f"experts/{second['name']}"
        assert "corrupt" in quarantined["reason"] and "sha256" in quarantined["reason"]
        assert str(settings.data_dir.resolve()) not in ready.text
        assert body["stack_version"] == body["database_stack_version"] and body["stale"] is False
        # The rest serves: the healthy expert answers its prompt, the broken one's gets the base.
        served = answers(client)
        assert served[FRANCE["prompt"]] == both[FRANCE["prompt"]]
        assert served[FOX["prompt"]][1] is None and served[UNRELATED] == both[UNRELATED]
        assert "lemoe_quarantined_experts 1.0" in client.get("/metrics").text
        # Recorded once, not at every poll of the stack.
        stack = runtime_of(client).stack
        for _ in range(3):
            assert not stack.sync_if_changed()  # its file did not change: nothing to reload
            stack.sync()  # a reload for any other reason retries it
        [event] = load_failures(client)
        assert event["actor"] == "system" and event["expert_id"] == second["id"]
        assert event["payload"]["path"] == quarantined["path"] and "corrupt" in event["payload"]["reason"]

        weights.write_bytes(good)  # restored from a backup: heals without a restart
        assert stack.sync_if_changed()

        healed = client.get("/readyz").json()
        assert healed["status"] == "ready" and healed["quarantined_experts"] == []
        assert healed["active_experts"] == [first["name"], second["name"]]
        assert answers(client) == both
        assert "lemoe_quarantined_experts 0.0" in client.get("/metrics").text
        assert len(load_failures(client)) == 1
        assert not stack.sync_if_changed()  # nothing left to retry


def test_a_missing_expert_file_is_quarantined_and_deactivating_it_clears_it(trained):
    settings, before = trained
    name = before["active"][0]
    weights = settings.experts_dir / name / "weights.safetensors"
    weights.unlink()

    with fresh_app(settings) as client:
        body = client.get("/readyz").json()
        assert body["status"] == "degraded" and body["active_experts"] == []
        [quarantined] = body["quarantined_experts"]
        assert quarantined["name"] == name and quarantined["reason"] == "missing weights.safetensors"
        # Another problem with its files is noticed at the next poll and recorded too.
        weights.write_bytes(b"not a safetensors file")
        assert runtime_of(client).stack.sync_if_changed()
        [quarantined] = client.get("/readyz").json()["quarantined_experts"]
        assert "corrupt" in quarantined["reason"]
        reasons = [e["payload"]["reason"] for e in load_failures(client)]
        assert len(reasons) == 2 and reasons[1] == "missing weights.safetensors"  # newest first

        off = client.post(f"/v1/experts/{quarantined['id']}/deactivate")

        assert off.status_code == 200, off.text
        body = client.get("/readyz").json()
        assert body["status"] == "ready" and body["quarantined_experts"] == []
        assert len(load_failures(client)) == 2


def test_activating_an_expert_with_a_corrupt_file_is_refused(trained):
    settings, before = trained
    inactive = before["experts"][0]
    assert inactive["status"] == "inactive"
    weights = settings.experts_dir / inactive["name"] / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])

    with fresh_app(settings) as client:  # only active experts are loaded at start-up
        response = client.post(f"/v1/experts/{inactive['id']}/activate")

        error = assert_error(response, 409, "expert_files_invalid", inactive["name"], f"experts/{inactive['name']}")
        assert "corrupt" in error["message"] and str(settings.data_dir.resolve()) not in error["message"]
        assert client.get(f"/v1/experts/{inactive['id']}").json()["status"] == "inactive"
        assert client.get("/readyz").json()["active_experts"] == before["active"]
        assert {e["status"] for e in client.get("/v1/edits", params={"expert_id": inactive["id"]}).json()["items"]} == {"rolled_back"}
        assert client.get("/v1/audit", params={"action": "edit.restored"}).json()["items"] == []
        assert answers(client) == before["answers"]


def test_reactivating_an_expert_whose_file_changed_after_loading_is_refused(trained):
    settings, before = trained
    with fresh_app(settings) as client:  # loads the active expert, then its file is damaged
        active = next(e for e in client.get("/v1/experts").json()["items"] if e["status"] == "active")
        assert client.post(f"/v1/experts/{active['id']}/deactivate").status_code == 200
        weights = settings.experts_dir / active["name"] / "weights.safetensors"
        weights.write_bytes(weights.read_bytes()[:-8])

        response = client.post(f"/v1/experts/{active['id']}/activate")

        error = assert_error(response, 409, "expert_files_invalid", active["name"])
        assert "corrupt" in error["message"]
        assert client.get("/readyz").json()["active_experts"] == []


# --- kill -9 during training, with the real server process ------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m app.cli serve` in a subprocess, on the tiny model and a file SQLite."""

    def __init__(self, model_dir: Path, data_dir: Path, log: Path, **env: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "OMP_NUM_THREADS": "1",
            "LEMOE_MODEL_PATH": str(model_dir),
            "LEMOE_DATA_DIR": str(data_dir),
            "DATABASE_URL": f"sqlite:///{data_dir / 'lemoe.db'}",
            "LEMOE_DEVICE": "cpu",
            "LEMOE_GATE_THRESHOLD": "0.9",
            "LEMOE_WORKER_ENABLED": "true",
            "LEMOE_WORKER_INTERVAL_S": "3600",
            "LEMOE_STACK_POLL_INTERVAL_S": "0",
            **env,
        }
        self.env.pop("LEMOE_DATABASE_URL", None)
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self) -> httpx.Client:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port)],
                cwd=self.log.parent,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        client = httpx.Client(base_url=self.url, timeout=30)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the server exited:\n{self.log.read_text()[-3000:]}"
            try:
                if client.get("/readyz").status_code == 200:
                    return client
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"the server never became ready:\n{self.log.read_text()[-3000:]}")

    def kill9(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        return self.process.returncode


def poll_until(check, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_kill_9_mid_training_loses_nothing(tiny_model_dir: Path, tmp_path: Path):
    data_dir, log = tmp_path / "data", tmp_path / "server.log"
    # Training that never converges, so the run is surely `running` when the process dies.
    slow = Server(tiny_model_dir, data_dir, log, LEMOE_TRAIN_MAX_STEPS="1000000", LEMOE_TRAIN_LOSS_THRESHOLD="0")
    client = slow.start()
    try:
        ids = client.post("/v1/edits", json=[FRANCE, FOX]).json()["ids"]
        run_id = client.post("/v1/training-runs", headers={"X-Actor": "judy"}).json()["id"]
        poll_until(
            lambda: (r := client.get(f"/v1/training-runs/{run_id}").json())["status"] == "running" and r["current_loss"] is not None,
            what="the run to be training",
        )
        assert {client.get(f"/v1/edits/{i}").json()["status"] for i in ids} == {"training"}
    finally:
        slow.kill9()
        client.close()

    fast = Server(tiny_model_dir, data_dir, log, LEMOE_TRAIN_MAX_STEPS="60")
    client = fast.start()
    try:
        run = client.get(f"/v1/training-runs/{run_id}").json()
        assert run["status"] == "interrupted" and run["finished_at"] is not None
        edits = client.get("/v1/edits").json()["items"]
        assert sorted(e["id"] for e in edits) == sorted(ids)  # every accepted edit is there
        assert {e["status"] for e in edits} == {"pending"}
        for edit_id in ids:
            actions = [e["action"] for e in client.get(f"/v1/edits/{edit_id}/events").json()["items"]]
            assert actions == ["edit.submitted", "edit.planned", "edit.requeued"]
        interrupted = client.get("/v1/audit", params={"action": "training_run.interrupted"}).json()["items"]
        assert [e["training_run_id"] for e in interrupted] == [run_id]

        next_run = client.post("/v1/training-runs").json()["id"]
        poll_until(lambda: client.get(f"/v1/training-runs/{next_run}").json()["status"] == "succeeded", what="the next run")
        assert {client.get(f"/v1/edits/{i}").json()["status"] for i in ids} == {"applied"}
        assert client.post("/v1/generate", json={"prompt": FRANCE["prompt"]}).json()["expert"] is not None
    finally:
        client.close()
        # uvicorn re-raises SIGTERM after a graceful shutdown, so -SIGTERM is a clean exit too.
        assert fast.stop() in (0, -signal.SIGTERM), log.read_text()[-3000:]
        assert "Application shutdown complete" in log.read_text()


def test_experts_made_at_another_adaptor_layer_are_quarantined_not_served_there(trained):
    settings, before = trained
    [first, second] = before["experts"]
    moved = settings.model_copy(update={"adaptor_layer": 2})  # the tiny model's default is 3

    with fresh_app(moved) as client:  # starts degraded: the experts are refused, not misplaced
        body = client.get("/readyz").json()
        assert body["status"] == "degraded" and body["active_experts"] == []
        [quarantined] = body["quarantined_experts"]
        assert (quarantined["id"], quarantined["name"]) == (second["id"], second["name"])
        assert quarantined["reason"].startswith("trained for adaptor layer (LEMOE_ADAPTOR_LAYER) 3, this server runs 2")
        assert generate(client, FOX["prompt"])["expert"] is None
        [event] = load_failures(client)
        assert event["expert_id"] == second["id"] and event["payload"]["reason"] == quarantined["reason"]
        # Activating one made for the other layer is refused with the same reason.
        refused = client.post(f"/v1/experts/{first['id']}/activate")
        assert refused.status_code == 409 and "adaptor layer (LEMOE_ADAPTOR_LAYER) 3, this server runs 2" in refused.text

    with fresh_app(settings) as client:  # the setting restored: it serves again
        assert client.get("/readyz").json()["active_experts"] == before["active"]
        assert answers(client) == before["answers"]


def test_kill_9_mid_retraction_keeps_the_old_expert_serving_then_finishes(tiny_model_dir: Path, tmp_path: Path):
    data_dir, log = tmp_path / "data", tmp_path / "server.log"
    fast = Server(tiny_model_dir, data_dir, log, LEMOE_TRAIN_MAX_STEPS="60")
    client = fast.start()
    try:
        base = client.post("/v1/generate", json={"prompt": FRANCE["prompt"]}).json()["text"]
        france, fox = client.post("/v1/edits", json=[FRANCE, FOX]).json()["ids"]
        run_id = client.post("/v1/training-runs").json()["id"]
        poll_until(lambda: client.get(f"/v1/training-runs/{run_id}").json()["status"] == "succeeded", what="the run")
        [old] = client.get("/v1/experts").json()["items"]
    finally:
        client.close()
        fast.stop()

    # Retraining that never converges, so the process surely dies in the middle of it.
    slow = Server(tiny_model_dir, data_dir, log, LEMOE_TRAIN_MAX_STEPS="1000000", LEMOE_TRAIN_LOSS_THRESHOLD="0")
    client = slow.start()
    try:
        assert client.delete(f"/v1/edits/{france}", headers={"X-Actor": "judy"}).status_code == 202
        poll_until(lambda: client.get("/readyz").json()["worker"] == "training", what="the retraining")
        served = client.post("/v1/generate", json={"prompt": FRANCE["prompt"]}).json()
        assert served["expert"]["id"] == old["id"]  # while its replacement trains
    finally:
        slow.kill9()
        client.close()

    fast = Server(tiny_model_dir, data_dir, log, LEMOE_TRAIN_MAX_STEPS="60")
    client = fast.start()
    try:
        # Resumed by the trainer at start-up, whichever state the kill left.
        poll_until(lambda: client.get(f"/v1/edits/{france}").json()["status"] == "retracted", what="the retraction")
        old_row, new = client.get("/v1/experts").json()["items"]
        assert (old_row["status"], old_row["replaced_by_id"], new["status"]) == ("inactive", new["id"], "active")
        assert client.get(f"/v1/edits/{fox}").json()["expert_id"] == new["id"]
        assert client.post("/v1/generate", json={"prompt": FRANCE["prompt"]}).json()["text"] == base
        assert client.post("/v1/generate", json={"prompt": FOX["prompt"]}).json()["expert"]["id"] == new["id"]
        actions = [e["action"] for e in client.get(f"/v1/edits/{france}/events").json()["items"]]
        assert actions[-2:] == ["edit.retraction_requested", "edit.retracted"]
    finally:
        client.close()
        assert fast.stop() in (0, -signal.SIGTERM), log.read_text()[-3000:]
