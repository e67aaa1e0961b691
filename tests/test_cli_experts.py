"""`lemoe experts check | quarantine`: inspect and repair expert files offline, on SQLite and
PostgreSQL."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from sqlalchemy.orm import Session, sessionmaker

from app import cli, store
from app.domain import AuditAction, EditStatus, ExpertStatus
from app.lemoe.expert import Expert, ExpertEntry
from app.lemoe.io import save_expert
from tests.pg import DATABASE_BACKENDS, temporary_database_url
from tests.test_cli import env

__all__ = ["env"]


def write_expert(experts_dir: Path, name: str) -> str:
    torch.manual_seed(len(name))
    entry = ExpertEntry(name, Expert(8, 4), anchors=torch.randn(2, 8), edit_ids=[1], meta={})
    return save_expert(entry, experts_dir / name)


@dataclass
class Setup:
    ids: dict[str, int]  # expert-ok, expert-bad, expert-gone by short name, and "edit"
    sessions: sessionmaker[Session]


@pytest.fixture(params=DATABASE_BACKENDS)
def experts(request, env, tmp_path: Path) -> Iterator[Setup]:
    """ok (active, sound files), bad (active, corrupt weights, one applied edit), gone (inactive,
    no files)."""
    data = tmp_path / "data"
    with temporary_database_url(request.param, tmp_path) as url:
        env.setenv("DATABASE_URL", url)
        database = store.make_engine(url)
        sessions = store.make_session_factory(database)
        ids = {}
        with sessions() as session:
            for name, status in (("ok", "active"), ("bad", "active"), ("gone", "inactive")):
                sha = write_expert(data / "experts", f"expert-{name}")
                ids[name] = store.add_expert(session, name=f"expert-{name}", path=f"experts/expert-{name}", sha256=sha, status=status).id
            [edit] = store.add_edits(session, edits=[store.pending_edit("The capital of France is", "Rome")])
            store.set_edit_status(session, edit_ids=[edit.id], status=EditStatus.APPLIED, expert_id=ids["bad"])
            ids["edit"] = edit.id
            session.commit()
        weights = data / "experts" / "expert-bad" / "weights.safetensors"
        weights.write_bytes(weights.read_bytes()[:-4])
        for path in (data / "experts" / "expert-gone").iterdir():
            path.unlink()
        yield Setup(ids, sessions)
        database.dispose()


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_check_lists_each_active_expert_and_fails_on_a_broken_one(experts, capsys, tmp_path):
    assert cli.main(["experts", "check"]) == 1

    out, err = capsys.readouterr()
    ok, bad = lines(out)
    assert ok.startswith("ok") and "expert-ok" in ok and "experts/expert-ok" in ok
    assert bad.startswith("BROKEN") and "expert-bad" in bad and f" {experts.ids['bad']} " in bad
    assert "experts/expert-bad: weights.safetensors is corrupt: sha256" in bad
    assert str(tmp_path) not in out  # paths relative to the data dir
    assert "2 active experts checked, 1 broken" in err and "lemoe experts quarantine" in err


def test_check_all_includes_inactive_experts(experts, capsys):
    assert cli.main(["experts", "check", "--all"]) == 1

    out = lines(capsys.readouterr().out)
    assert len(out) == 3
    assert out[2].startswith("BROKEN") and "expert-gone  inactive" in out[2]
    assert out[2].endswith("missing config.json and weights.safetensors")


def test_quarantine_takes_the_expert_out_everywhere_in_one_audited_change(experts, capsys):
    ids, sessions = experts.ids, experts.sessions
    with sessions() as session:
        version = store.get_stack_version(session)

    assert cli.main(["experts", "quarantine", "expert-bad", "--reason", "bad disk", "--actor", "ops"]) == 0

    assert "is quarantined" in capsys.readouterr().out
    with sessions() as session:
        expert = store.get_expert(session, expert_id=ids["bad"])
        assert expert.status is ExpertStatus.QUARANTINED
        assert store.get_edit(session, edit_id=ids["edit"]).status is EditStatus.ROLLED_BACK
        assert store.get_stack_version(session) == version + 1  # replicas reload without it
        [event] = store.list_audit(session, action=AuditAction.EXPERT_QUARANTINED).items
        assert event.actor == "ops" and event.expert_id == ids["bad"]
        assert event.payload == {
            "name": "expert-bad",
            "reason": "bad disk",
            "previous_status": "active",
            "edit_ids": [ids["edit"]],
        }
        [rolled_back] = store.list_audit(session, action=AuditAction.EDIT_ROLLED_BACK).items
        assert rolled_back.edit_id == ids["edit"] and rolled_back.actor == "ops"
    # The active set is sound now.
    assert cli.main(["experts", "check"]) == 0
    assert [line.split()[0] for line in lines(capsys.readouterr().out)] == ["ok"]


def test_quarantine_by_id_and_its_refusals(experts, capsys):
    gone = str(experts.ids["gone"])
    assert cli.main(["experts", "quarantine", gone]) == 0
    capsys.readouterr()

    assert cli.main(["experts", "quarantine", gone]) == 1
    assert "already quarantined" in capsys.readouterr().err
    assert cli.main(["experts", "quarantine", "expert-nope"]) == 1
    assert "no expert has the id or name 'expert-nope'" in capsys.readouterr().err
    assert cli.main(["experts", "quarantine", "expert-ok", "--actor", " "]) == 1
    assert "actor must be a non-empty string" in capsys.readouterr().err
    with experts.sessions() as session:
        statuses = {e.name: e.status for e in store.list_experts(session)}
    assert statuses == {
        "expert-ok": ExpertStatus.ACTIVE,
        "expert-bad": ExpertStatus.ACTIVE,
        "expert-gone": ExpertStatus.QUARANTINED,
    }


def test_an_unmigrated_database_is_a_clear_exit_2(env, capsys, tmp_path):
    env.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")

    assert cli.main(["experts", "check"]) == 2
    assert "lemoe migrate" in capsys.readouterr().err


def test_the_experts_commands_are_listed():
    assert "experts" in cli.build_parser().format_help()
    assert cli.build_parser().parse_args(["experts", "prune"]).experts_command == "prune"
    args = cli.build_parser().parse_args(["experts", "quarantine", "7"])
    assert (args.expert, args.reason, args.actor) == ("7", "its files are broken", "cli")


def last_changed(folder: Path, *, hours_ago: float) -> None:
    at = time.time() - hours_ago * 3600
    for path in (folder, *folder.rglob("*")):
        os.utime(path, (at, at))


def test_prune_removes_only_old_folders_no_expert_names(experts, capsys, tmp_path):
    root = tmp_path / "data" / "experts"
    write_expert(root, "expert-r9-b0")  # a crashed run's: no row names it
    write_expert(root, "expert-x1-e5")  # no row names it yet: another process may be writing it
    for name in ("expert-r9-b0", "expert-ok", "expert-gone"):  # ok: active, gone: inactive
        last_changed(root / name, hours_ago=2)
    kept = ["expert-bad", "expert-gone", "expert-ok", "expert-x1-e5"]

    assert cli.main(["experts", "prune", "--dry-run"]) == 0

    assert lines(capsys.readouterr().out) == ["would remove experts/expert-r9-b0  (unchanged for 2.0 h)"]
    assert sorted(p.name for p in root.iterdir()) == sorted([*kept, "expert-r9-b0"])
    with experts.sessions() as session:
        assert store.list_audit(session, action=AuditAction.EXPERT_FILES_PRUNED).items == []

    assert cli.main(["experts", "prune", "--actor", "alice"]) == 0

    assert lines(capsys.readouterr().out) == ["removed experts/expert-r9-b0  (unchanged for 2.0 h)"]
    assert sorted(p.name for p in root.iterdir()) == kept
    with experts.sessions() as session:
        [event] = store.list_audit(session, action=AuditAction.EXPERT_FILES_PRUNED).items
        assert (event.actor, event.payload["path"]) == ("alice", "experts/expert-r9-b0")

    assert cli.main(["experts", "prune", "--min-age-s", "0"]) == 0  # no grace: the young orphan goes too
    assert lines(capsys.readouterr().out)[0].startswith("removed experts/expert-x1-e5")
    assert sorted(p.name for p in root.iterdir()) == kept[:3]
