"""Every supported architecture served end to end from a model dir named by LEMOE_MODEL_PATH:
submit edits, train, generate; and an unsupported one refused at start-up, naming the supported."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.lemoe.layout import LAYOUTS, UnsupportedModel
from app.main import create_app
from tests.api.support import FOX, FRANCE, UNRELATED, generate, submit, tiny_settings, worker_for
from tests.tiny import ARCHITECTURES, build_tiny_tokenizer, build_unsupported_model, save_model_dir, save_tiny_model_dir


def settings_from_env(monkeypatch: pytest.MonkeyPatch, model_dir: Path, data_dir: Path) -> Settings:
    """The tiny settings, but the model dir read from LEMOE_MODEL_PATH as a deployment gives it."""
    monkeypatch.setenv("LEMOE_MODEL_PATH", str(model_dir))
    values = tiny_settings(model_dir, data_dir).model_dump(exclude_unset=True, exclude={"model_path"})
    settings = Settings(_env_file=None, **values)
    assert settings.model_path == model_dir
    return settings


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_each_architecture_serves_edit_train_generate(arch, monkeypatch, tmp_path):
    model_dir = save_tiny_model_dir(tmp_path / f"tiny-{arch}", arch=arch)
    settings = settings_from_env(monkeypatch, model_dir, tmp_path / "data")
    with TestClient(create_app(settings, load_in_background=False)) as client:
        assert client.get("/readyz").json()["status"] == "ready"
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == [f"tiny-{arch}"]
        assert client.app.state.runtime.engine.loaded.model.config.model_type == arch
        base_unrelated = generate(client, UNRELATED)
        france_id, _ = submit(client, FRANCE, FOX)
        run = client.post("/v1/training-runs")
        assert run.status_code == 202, run.text
        worker_for(client).run_once(run_id=run.json()["id"])
        assert client.get(f"/v1/training-runs/{run.json()['id']}").json()["status"] == "succeeded"

        edited = generate(client, FRANCE["prompt"])
        assert edited["text"].strip().startswith(FRANCE["target"]), edited
        assert edited["expert"] is not None and edited["nearest_edit_id"] == france_id
        unrelated = generate(client, UNRELATED)
        assert unrelated["expert"] is None and unrelated["text"] == base_unrelated["text"]


def test_an_unsupported_architecture_fails_start_up_naming_the_supported_types(monkeypatch, tmp_path):
    tokenizer = build_tiny_tokenizer()
    model_dir = save_model_dir(tmp_path / "tiny-opt", build_unsupported_model(tokenizer), tokenizer)
    settings = settings_from_env(monkeypatch, model_dir, tmp_path / "data")
    expected = "model type 'opt' is not supported; supported model types: " + ", ".join(sorted(LAYOUTS))
    with pytest.raises(UnsupportedModel, match=expected), TestClient(create_app(settings, load_in_background=False)):
        pass
