"""Edits sent without a subject get one at training (the model's pick, recorded as inferred);
a client's subject is kept. On SQLite and PostgreSQL, with the tiny random model."""

from __future__ import annotations

import pytest

from app.engine.engine import Engine
from tests.api.support import FRANCE, submit, tiny_settings, worker_for

BARE = {"prompt": "Who is the chief of the Acme works?", "target": "Jane Doe"}


def actions(client, edit_id: int) -> list[str]:
    return [e["action"] for e in client.get(f"/v1/edits/{edit_id}/events").json()["items"]]


def spy_on_training(engine: Engine, monkeypatch) -> list:
    """The edits each build_expert call trains (the subjects routing will use)."""
    trained: list = []
    original = engine.build_expert

    def build(name, edits, progress=None):
        trained.extend(edits)
        return original(name, edits, progress=progress)

    monkeypatch.setattr(engine, "build_expert", build)
    return trained


def test_an_edit_without_subject_gets_one_inferred_at_training(db_client, monkeypatch):
    [edit_id] = submit(db_client, BARE, actor="frank")
    before = db_client.get(f"/v1/edits/{edit_id}").json()
    assert (before["subject"], before["subject_source"]) == (None, None)
    worker = worker_for(db_client)
    trained = spy_on_training(worker.engine, monkeypatch)

    run_id = worker.run_once()

    edit = db_client.get(f"/v1/edits/{edit_id}").json()
    assert edit["status"] == "applied"
    assert edit["subject_source"] == "inferred"
    assert edit["subject"] and edit["subject"] in BARE["prompt"] and edit["subject"] != BARE["prompt"]
    # Training (and so routing) used the recorded subject.
    assert [(e.edit_id, e.subject) for e in trained] == [(edit_id, edit["subject"])]
    events = db_client.get(f"/v1/edits/{edit_id}/events").json()["items"]
    assert [e["action"] for e in events] == [
        "edit.submitted",
        "edit.planned",
        "edit.subject_inferred",
        "edit.applied",
    ]
    inferred = events[2]
    assert inferred["payload"] == {"subject": edit["subject"], "method": "model-span"}
    assert inferred["training_run_id"] == run_id and inferred["actor"] == "scheduler"
    listed = db_client.get("/v1/edits", params={"subject": edit["subject"]}).json()["items"]
    assert [e["id"] for e in listed] == [edit_id]


def test_a_client_subject_is_kept_and_nothing_is_inferred_for_it(db_client, monkeypatch):
    accepted = db_client.post("/v1/edits", json=[FRANCE, BARE]).json()
    assert [(e["subject"], e["subject_source"]) for e in accepted["items"]] == [("France", "client"), (None, None)]
    given, bare = accepted["ids"]
    worker = worker_for(db_client)
    trained = spy_on_training(worker.engine, monkeypatch)

    worker.run_once()

    edit = db_client.get(f"/v1/edits/{given}").json()
    assert (edit["status"], edit["subject"], edit["subject_source"]) == ("applied", "France", "client")
    assert "edit.subject_inferred" not in actions(db_client, given)
    assert "edit.subject_inferred" in actions(db_client, bare)
    assert {e.edit_id: e.subject for e in trained}[given] == "France"


def test_a_failed_inference_trains_the_edit_without_a_subject(db_client, monkeypatch):
    [edit_id] = submit(db_client, BARE)
    worker = worker_for(db_client)
    trained = spy_on_training(worker.engine, monkeypatch)

    def broken(edits):
        raise RuntimeError("inference broke")

    monkeypatch.setattr(worker.engine, "infer_subjects", broken)
    run_id = worker.run_once()

    run = db_client.get(f"/v1/training-runs/{run_id}").json()
    assert (run["status"], run["error"]) == ("succeeded", None)
    edit = db_client.get(f"/v1/edits/{edit_id}").json()
    assert (edit["status"], edit["subject"], edit["subject_source"]) == ("applied", None, None)
    assert "edit.subject_inferred" not in actions(db_client, edit_id)
    assert [(e.edit_id, e.subject) for e in trained] == [(edit_id, None)]


def test_infer_subjects_setting_reaches_the_editor(tiny_model_dir, tmp_path):
    off = Engine.from_settings(tiny_settings(tiny_model_dir, tmp_path / "data", infer_subjects=False))
    assert off.editor.config.infer_subjects is False
    from app.engine.engine import Edit

    assert off.infer_subjects([Edit(1, BARE["prompt"], BARE["target"])]) == {}


@pytest.mark.parametrize(
    ("switch", "threshold", "default", "attribute"),
    [
        ("relation_keys", "relation_threshold", 0.3, "relation_threshold"),
        ("subject_span_keys", "subject_span_threshold", 0.6, "span_threshold"),
    ],
)
def test_relation_and_span_settings_reach_the_editor(tiny_model_dir, tmp_path, switch, threshold, default, attribute):
    plain = Engine.from_settings(tiny_settings(tiny_model_dir, tmp_path / "a"))
    assert getattr(plain.editor.router.subject, attribute) == default
    tuned = Engine.from_settings(tiny_settings(tiny_model_dir, tmp_path / "b", **{threshold: 0.5}))
    assert getattr(tuned.editor.router.subject, attribute) == 0.5
    off = Engine.from_settings(tiny_settings(tiny_model_dir, tmp_path / "c", **{switch: False}))
    assert getattr(off.editor.config, threshold) is None and getattr(off.editor.router.subject, attribute) is None


def test_edit_codes_setting_reaches_the_editor(tiny_model_dir, tmp_path):
    assert Engine.from_settings(tiny_settings(tiny_model_dir, tmp_path / "a")).editor.config.edit_codes is True
    assert Engine.from_settings(tiny_settings(tiny_model_dir, tmp_path / "b", edit_codes=False)).editor.config.edit_codes is False


def test_expert_positions_setting_reaches_the_editor(tiny_model_dir, tmp_path):
    assert Engine.from_settings(tiny_settings(tiny_model_dir, tmp_path / "a")).editor.config.expert_positions == "answer"
    settings = tiny_settings(tiny_model_dir, tmp_path / "b", expert_positions="all")
    assert Engine.from_settings(settings).editor.config.expert_positions == "all"


def test_train_precision_setting_reaches_the_editor(tiny_model_dir, tmp_path):
    assert Engine.from_settings(tiny_settings(tiny_model_dir, tmp_path / "a")).editor.config.train_precision == "auto"
    settings = tiny_settings(tiny_model_dir, tmp_path / "b", train_precision="bfloat16")
    assert Engine.from_settings(settings).editor.train_precision == "bfloat16"


def test_warm_up_settings_reach_the_editor_and_the_runs_step_plan(tiny_model_dir, tmp_path):
    plain = Engine.from_settings(tiny_settings(tiny_model_dir, tmp_path / "a", train_max_steps=10))
    assert plain.editor.config.warmup_loss == 1.0
    # A run plans each expert's steps with the warm-up's on top (its progress never passes the plan).
    assert plain.max_steps == 10 + 5
    tuned = Engine.from_settings(tiny_settings(tiny_model_dir, tmp_path / "b", train_warmup_loss=0.5))
    assert tuned.editor.config.warmup_loss == 0.5
    off = Engine.from_settings(tiny_settings(tiny_model_dir, tmp_path / "c", train_max_steps=10, train_warmup=False))
    assert off.editor.config.warmup_loss is None and off.max_steps == 10


def test_subject_token_check_setting_reaches_the_router(tiny_model_dir, tmp_path):
    assert Engine.from_settings(tiny_settings(tiny_model_dir, tmp_path / "a")).editor.router.subject.token_check is True
    off = Engine.from_settings(tiny_settings(tiny_model_dir, tmp_path / "b", subject_token_check=False))
    assert off.editor.router.subject.token_check is False


def test_relation_rank_weight_setting_reaches_the_router(tiny_model_dir, tmp_path):
    assert Engine.from_settings(tiny_settings(tiny_model_dir, tmp_path / "a")).editor.router.relation_rank_weight == 0.25
    off = Engine.from_settings(tiny_settings(tiny_model_dir, tmp_path / "b", relation_rank_weight=0.0))
    assert off.editor.router.relation_rank_weight == 0.0


def test_relation_token_weights_setting_reaches_the_editor(tiny_model_dir, tmp_path):
    assert Engine.from_settings(tiny_settings(tiny_model_dir, tmp_path / "a")).editor.config.relation_token_weights is True
    off = Engine.from_settings(tiny_settings(tiny_model_dir, tmp_path / "b", relation_token_weights=False))
    assert off.editor.config.relation_token_weights is False
