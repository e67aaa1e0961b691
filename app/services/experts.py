"""Experts: listing, and rollback (deactivate) / restore (activate)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from app import store
from app.domain import AuditAction, EditStatus, ExpertStatus
from app.errors import ExpertNotFound, ExpertStateConflict
from app.services.stack import LiveStack


@dataclass(frozen=True)
class ExpertChangeResult:
    expert: store.Expert
    edit_ids: list[int]  # all edits of the expert
    changed_edit_ids: list[int]
    edit_status: EditStatus
    active_experts: list[str]


def list_experts(session: Session, *, status: ExpertStatus | None = None) -> list[store.Expert]:
    return store.list_experts(session, status=status)


def get_expert(session: Session, *, expert_id: int) -> tuple[store.Expert, list[int]]:
    """The expert and the ids of the edits it was trained on."""
    expert = store.get_expert(session, expert_id=expert_id)
    if expert is None:
        raise ExpertNotFound(expert_id)
    return expert, [e.id for e in store.edits_of_expert(session, expert_id=expert_id)]


def deactivate_expert(
    session: Session, *, stack: LiveStack, expert_id: int, actor: str
) -> ExpertChangeResult:
    """Rollback: the expert leaves the live stack and its applied edits become rolled_back."""
    return _change(
        session,
        stack=stack,
        expert_id=expert_id,
        actor=actor,
        to=ExpertStatus.INACTIVE,
        edits_from=EditStatus.APPLIED,
        edits_to=EditStatus.ROLLED_BACK,
        expert_action=AuditAction.EXPERT_DEACTIVATED,
        edit_action=AuditAction.EDIT_ROLLED_BACK,
    )


def activate_expert(
    session: Session, *, stack: LiveStack, expert_id: int, actor: str
) -> ExpertChangeResult:
    """Restore: the expert's files are loaded and checked, then it and its edits are live again."""
    return _change(
        session,
        stack=stack,
        expert_id=expert_id,
        actor=actor,
        to=ExpertStatus.ACTIVE,
        edits_from=EditStatus.ROLLED_BACK,
        edits_to=EditStatus.APPLIED,
        expert_action=AuditAction.EXPERT_ACTIVATED,
        edit_action=AuditAction.EDIT_RESTORED,
    )


def _change(
    session: Session,
    *,
    stack: LiveStack,
    expert_id: int,
    actor: str,
    to: ExpertStatus,
    edits_from: EditStatus,
    edits_to: EditStatus,
    expert_action: AuditAction,
    edit_action: AuditAction,
) -> ExpertChangeResult:
    # Under the stack lock: no other change (or sync) interleaves between this commit and the
    # engine taking the new stack.
    with stack.lock:
        expert = store.get_expert(session, expert_id=expert_id)
        if expert is None:
            raise ExpertNotFound(expert_id)
        if expert.status is to:
            raise ExpertStateConflict(
                f"expert {expert_id} ({expert.name!r}) is already {to.value}"
            )
        store.set_expert_status(session, expert_id=expert_id, status=to)
        edits = store.edits_of_expert(session, expert_id=expert_id)
        changed = [e.id for e in edits if e.status is edits_from]
        store.set_edit_status(session, edit_ids=changed, status=edits_to)
        store.append_audit(
            session,
            actor=actor,
            action=expert_action,
            expert_id=expert_id,
            payload={"name": expert.name, "edit_ids": changed},
        )
        for edit_id in changed:
            store.append_audit(session, actor=actor, action=edit_action, edit_id=edit_id, expert_id=expert_id)
        # Load (and check) the new stack before committing: a bad file (ExpertFilesInvalid,
        # 409) then leaves both SQL and the live stack as they were.
        try:
            stack.apply(store.list_experts(session, status=ExpertStatus.ACTIVE))
        except BaseException:
            session.rollback()
            raise
        version = store.get_stack_version(session)  # set_expert_status bumped it
        try:
            session.commit()
        except BaseException:
            session.rollback()
            stack.sync()  # back to what SQL holds
            raise
        stack.version = version
        return ExpertChangeResult(
            expert=expert,
            edit_ids=[e.id for e in edits],
            changed_edit_ids=changed,
            edit_status=edits_to,
            active_experts=stack.active_names(),
        )
