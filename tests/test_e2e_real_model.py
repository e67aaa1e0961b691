"""End to end on the real bundled SmolLM2-135M-Instruct, through HTTP: edit three ZsRE facts,
train, ask, check an unrelated prompt, roll back, restart."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from app.config import Settings
from app.engine.engine import Engine
from tests.api.support import running_app
from tests.real_model import MODEL_CACHE, zsre_records

pytestmark = pytest.mark.real_model

UNRELATED = "nq question: who sang the song i will always love you"


def real_settings(data_dir: Path) -> Settings:
    return Settings(
        _env_file=None,
        data_dir=data_dir,
        model_cache=MODEL_CACHE,
        device="cpu",
        database_url=f"sqlite:///{data_dir / 'lemoe.db'}",
        worker_enabled=True,
        worker_interval_s=3600,
        stack_poll_interval_s=0,
    )


def ask(client, prompt: str) -> dict:
    response = client.get("/v1/generate", params={"prompt": prompt, "max_new_tokens": 10})
    assert response.status_code == 200, response.text
    return response.json()


def train_now(client, *, keep_asking: str) -> tuple[dict, list[str]]:
    """Trigger a run and, until it ends, keep asking `keep_asking` (the in-process worker trains
    beside the requests); returns the run and the answers given meanwhile."""
    response = client.post("/v1/training-runs", headers={"X-Actor": "e2e"})
    assert response.status_code == 202, response.text
    run_id = response.json()["id"]
    answers = []
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        run = client.get(f"/v1/training-runs/{run_id}").json()
        if run["status"] in ("succeeded", "failed", "interrupted"):
            return run, answers
        answers.append(ask(client, keep_asking)["text"])
    raise AssertionError(f"training run {run_id} did not finish: {run}")


def test_edit_ask_roll_back_and_restart_on_the_real_model(tmp_path):
    records = zsre_records(10, 3)
    prompts = [r["src"] for r in records]
    settings = real_settings(tmp_path / "data")

    with running_app(settings, Engine.from_settings(settings)) as client:
        base = {p: ask(client, p)["text"] for p in [*prompts, UNRELATED]}
        edits = [{"prompt": r["src"], "target": r["alt"], "subject": r["subject"]} for r in records]
        accepted = client.post("/v1/edits", json=edits)
        assert accepted.status_code == 202 and accepted.json()["status"] == "pending"

        run, meanwhile = train_now(client, keep_asking=UNRELATED)
        assert run["status"] == "succeeded" and run["edits_done"] == 3, run
        assert meanwhile and set(meanwhile) == {base[UNRELATED]}
        [expert] = client.get("/v1/experts").json()["items"]

        for record in records:
            answer = ask(client, record["src"])
            assert answer["expert"]["name"] == expert["name"]
            assert answer["text"].strip().startswith(record["alt"]), (record, answer)
            assert answer["subject_score"] == pytest.approx(1.0, abs=1e-3)  # the edit's own subject token
        unrelated = ask(client, UNRELATED)
        assert unrelated["expert"] is None and unrelated["text"] == base[UNRELATED]
        # Asked as a chat (the model's own template, routed on the user's message), the reply
        # states the new fact too: each edit is also trained in chat form.
        for record in records:
            reply = client.post(
                "/v1/chat/completions",
                json={"model": "m", "temperature": 0, "max_tokens": 24, "messages": [{"role": "user", "content": record["src"]}]},
            ).json()
            assert reply["lemoe"]["expert"]["name"] == expert["name"], reply
            assert record["alt"] in reply["choices"][0]["message"]["content"], (record, reply)

        history = client.get(f"/v1/edits/{accepted.json()['ids'][0]}/events").json()["items"]
        assert [e["action"] for e in history] == ["edit.submitted", "edit.planned", "edit.applied"]

        assert client.post(f"/v1/experts/{expert['id']}/deactivate").status_code == 200
        for prompt in prompts:
            answer = ask(client, prompt)
            assert answer["expert"] is None and answer["text"] == base[prompt]
        assert client.post(f"/v1/experts/{expert['id']}/activate").status_code == 200
        before_restart = {p: ask(client, p) for p in [*prompts, UNRELATED]}

    with running_app(settings, Engine.from_settings(settings)) as client:
        after_restart = {p: ask(client, p) for p in [*prompts, UNRELATED]}
        statuses = {e["status"] for e in client.get("/v1/edits").json()["items"]}
    assert after_restart == before_restart
    assert statuses == {"applied"}


def test_retract_one_edit_of_an_expert_on_the_real_model(tmp_path):
    # Records 10 and 11 state one fact in two wordings: retracting either leaves the other
    # answering (another live edit covers it). Record 12 stands alone.
    records = zsre_records(10, 3)
    settings = real_settings(tmp_path / "data")

    with running_app(settings, Engine.from_settings(settings)) as client:
        base = {r["src"]: ask(client, r["src"])["text"] for r in records}
        edits = [{"prompt": r["src"], "target": r["alt"], "subject": r["subject"]} for r in records]
        ids = client.post("/v1/edits", json=edits).json()["ids"]
        run, _ = train_now(client, keep_asking=UNRELATED)
        assert run["status"] == "succeeded", run
        [old] = client.get("/v1/experts").json()["items"]

        assert client.delete(f"/v1/edits/{ids[2]}", headers={"X-Actor": "e2e"}).status_code == 202
        deadline = time.monotonic() + 600
        while client.get(f"/v1/edits/{ids[2]}").json()["status"] == "retracting":
            assert time.monotonic() < deadline, "the retraction did not finish"
            time.sleep(0.2)

        assert client.get(f"/v1/edits/{ids[2]}").json()["status"] == "retracted"
        _, new = client.get("/v1/experts").json()["items"]
        assert new["status"] == "active" and new["id"] == client.get(f"/v1/experts/{old['id']}").json()["replaced_by_id"]
        gone = ask(client, records[2]["src"])
        assert gone["expert"] is None and gone["text"] == base[records[2]["src"]]
        for record in records[:2]:  # retrained with the same seed: the kept edits keep their answers
            answer = ask(client, record["src"])
            assert answer["expert"]["id"] == new["id"]
            assert answer["text"].strip().startswith(record["alt"]), (record, answer)
