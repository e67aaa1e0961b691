"""Nothing is lost across restarts: the same active stack and answers after a clean stop, edits
requeued and trained after kill -9 mid-training, and a loud start-up failure on a bad file."""

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


def test_a_corrupt_expert_file_stops_start_up_naming_the_expert(trained):
    settings, before = trained
    name = before["active"][0]
    weights = settings.experts_dir / name / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))

    with pytest.raises(Exception) as failure:
        with fresh_app(settings):
            pass

    message = str(failure.value)
    assert name in message and "sha256" in message and "corrupt" in message


def test_a_missing_expert_file_stops_start_up_naming_the_expert(trained):
    settings, before = trained
    name = before["active"][0]
    (settings.experts_dir / name / "weights.safetensors").unlink()

    with pytest.raises(Exception) as failure:
        with fresh_app(settings):
            pass

    assert name in str(failure.value) and "missing" in str(failure.value)


def test_activating_an_expert_with_a_corrupt_file_is_refused(trained):
    settings, before = trained
    inactive = before["experts"][0]
    assert inactive["status"] == "inactive"
    weights = settings.experts_dir / inactive["name"] / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])

    with fresh_app(settings) as client:  # only active experts are loaded at start-up
        response = client.post(f"/v1/experts/{inactive['id']}/activate")

        error = assert_error(response, 409, "expert_files_invalid", inactive["name"])
        assert "corrupt" in error["message"]
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
                cwd=self.log.parent, env=self.env, stdout=out, stderr=subprocess.STDOUT,
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
            lambda: (r := client.get(f"/v1/training-runs/{run_id}").json())["status"] == "running"
            and r["current_loss"] is not None,
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
        poll_until(lambda: client.get(f"/v1/training-runs/{next_run}").json()["status"] == "succeeded",
                   what="the next run")
        assert {client.get(f"/v1/edits/{i}").json()["status"] for i in ids} == {"applied"}
        assert client.post("/v1/generate", json={"prompt": FRANCE["prompt"]}).json()["expert"] is not None
    finally:
        client.close()
        # uvicorn re-raises SIGTERM after a graceful shutdown, so -SIGTERM is a clean exit too.
        assert fast.stop() in (0, -signal.SIGTERM), log.read_text()[-3000:]
        assert "Application shutdown complete" in log.read_text()
