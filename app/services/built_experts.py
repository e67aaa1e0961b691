"""A newly built expert going live: its store row and its expert.registered / expert.activated
events, one shape for a training run's new expert and a retraction's replacement."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from app import store
from app.config import Settings
from app.domain import AuditAction, ExpertStatus
from app.services.stack import stored_path

if TYPE_CHECKING:
    from app.engine.checks import ExpertCheck
    from app.engine.engine import BuiltExpert


def add_live_expert(
    session: Session,
    *,
    settings: Settings,
    built: BuiltExpert,
    check: ExpertCheck | None,
    training_run_id: int | None = None,
    stack_order: int | None = None,
    details: dict[str, Any] | None = None,
) -> store.Expert:
    """The active row of `built` (not committed). `details` go into its metrics beside its training
    time, and into its expert.registered event (`announce_live_expert`)."""
    return store.add_expert(
        session,
        name=built.name,
        path=stored_path(settings, built.path),
        sha256=built.sha256,
        edit_count=len(built.edit_ids),
        training_run_id=training_run_id,
        final_loss=built.final_loss,
        steps=built.steps,
        metrics={"train_seconds": round(built.seconds, 3), **(details or {})},
        live_check=None if check is None else check.to_dict(),
        status=ExpertStatus.ACTIVE,
        stack_order=stack_order,
    )


def announce_live_expert(session: Session, expert: store.Expert, built: BuiltExpert, *, actor: str, **ids: Any) -> None:
    """expert.registered (with what it was trained on and its check) and expert.activated.
    `ids`: the other ids the events carry (training_run_id)."""
    details = {k: v for k, v in (expert.metrics or {}).items() if k != "train_seconds"}
    common = {"actor": actor, "expert_id": expert.id, **ids}
    payload = {
        "name": expert.name,
        "sha256": expert.sha256,
        "edit_ids": list(built.edit_ids),
        "steps": built.steps,
        "final_loss": built.final_loss,
        "train_seconds": round(built.seconds, 3),
        **details,
        "check": expert.live_check,
    }
    store.append_audit(session, action=AuditAction.EXPERT_REGISTERED, payload=payload, **common)
    store.append_audit(session, action=AuditAction.EXPERT_ACTIVATED, payload={"name": expert.name}, **common)
