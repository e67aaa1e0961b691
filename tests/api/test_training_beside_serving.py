"""The default mode: one process serves and trains. Neither may break the other."""

from __future__ import annotations

import threading
import time

from fastapi.testclient import TestClient

from app.config import Settings
from app.engine.engine import Engine
from tests.api.support import FOX, FRANCE, UNRELATED, running_app, submit

WAIT_S = 180.0  # generous: only a hang reaches it
PROMPTS = [UNRELATED, "The quick brown dog", "Answer the question briefly."]


class TrainerPauses:
    """Holds the training thread until requests were served meanwhile: inside its first forward
    pass (caching the adaptor layer's inputs) and after its first optimiser step."""

    def __init__(self) -> None:
        self.released = {"capture": threading.Event(), "step": threading.Event()}
        self.held: list[str] = []
        self.trainer: threading.Thread | None = None

    def hold(self, pause: str) -> None:
        self.held.append(pause)
        assert self.released[pause].wait(WAIT_S), f"no request was served during the {pause} pause"

    def release_current(self) -> None:
        if self.held:
            self.released[self.held[-1]].set()

    def wrap(self, build_expert):
        def build_while_serving(name, edits, progress=None):
            self.trainer = threading.current_thread()

            def on_step(step: int, loss: float) -> None:
                if step == 1:
                    self.hold("step")
                if progress is not None:
                    progress(step, loss)

            return build_expert(name, edits, progress=on_step)

        return build_while_serving

    def on_embedding(self, module, args, output) -> None:
        if threading.current_thread() is self.trainer and "capture" not in self.held:
            self.hold("capture")


def ask(client: TestClient, prompt: str) -> tuple[int, str]:
    response = client.post("/v1/generate", json={"prompt": prompt, "max_new_tokens": 6})
    return response.status_code, response.json()["text"] if response.status_code == 200 else response.text


def test_generation_never_fails_while_the_in_process_worker_trains(db_settings: Settings, shared_engine: Engine, monkeypatch):
    settings = db_settings.model_copy(update={"worker_enabled": True, "worker_interval_s": 3600.0})
    pauses = TrainerPauses()
    monkeypatch.setattr(shared_engine, "build_expert", pauses.wrap(shared_engine.build_expert))
    hook = shared_engine.loaded.model.get_input_embeddings().register_forward_hook(pauses.on_embedding)
    try:
        with running_app(settings, shared_engine) as client:
            alone = {p: ask(client, p) for p in PROMPTS}
            assert all(status == 200 for status, _ in alone.values()), alone
            ids = submit(client, FRANCE, FOX)
            stop = threading.Event()
            answers: list[tuple[str, int, str]] = []

            def serve() -> None:
                while not stop.is_set():
                    for prompt in PROMPTS:
                        answers.append((prompt, *ask(client, prompt)))
                    pauses.release_current()  # requests were served while it waited

            server = threading.Thread(target=serve)
            server.start()
            try:
                assert client.post("/v1/training-runs").status_code == 202
                deadline = time.monotonic() + WAIT_S
                statuses: list[str] = []
                while time.monotonic() < deadline:
                    statuses = [client.get(f"/v1/edits/{i}").json()["status"] for i in ids]
                    if all(s in ("applied", "failed") for s in statuses):
                        break
                    time.sleep(0.2)
            finally:
                stop.set()
                server.join(WAIT_S)

            assert pauses.held == ["capture", "step"]
            assert statuses == ["applied", "applied"]
            assert [a for a in answers if a[1] != 200] == []
            changed = [(p, text) for p, _, text in answers if text != alone[p][1]]
            assert changed == [], "an unrelated output differed from the run without training"
            routed = client.post("/v1/generate", json={"prompt": FRANCE["prompt"], "max_new_tokens": 6}).json()
            assert routed["expert"] is not None and routed["text"].strip().startswith("Rome")
            assert client.get("/v1/training-runs").json()["items"][0]["status"] == "succeeded"
    finally:
        hook.remove()
