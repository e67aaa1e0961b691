"""Experts: listing, rollback (deactivate) / restore (activate), and the offline check and
quarantine of experts whose files are bad."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from app import store
from app.config import Settings
from app.domain import AuditAction, EditStatus, ExpertStatus
from app.errors import ExpertNotFound, ExpertStateConflict, NotFound
from app.services.checks import MAX_ID
from app.services.stack import LiveStack, resolve_path, shown_path


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
    session: Session, *, stack: LiveStack, expert_id: int, actor: str, on_behalf_of: str | None = None
) -> ExpertChangeResult:
    """Rollback: the expert leaves the live stack and its applied edits become rolled_back."""
    return _change(
        session,
        stack=stack,
        expert_id=expert_id,
        actor=actor,
        on_behalf_of=on_behalf_of,
        to=ExpertStatus.INACTIVE,
        edits_from=EditStatus.APPLIED,
        edits_to=EditStatus.ROLLED_BACK,
        expert_action=AuditAction.EXPERT_DEACTIVATED,
        edit_action=AuditAction.EDIT_ROLLED_BACK,
    )


def activate_expert(
    session: Session, *, stack: LiveStack, expert_id: int, actor: str, on_behalf_of: str | None = None
) -> ExpertChangeResult:
    """Restore: the expert's files are loaded and checked, then it and its edits are live again."""
    return _change(
        session,
        stack=stack,
        expert_id=expert_id,
        actor=actor,
        on_behalf_of=on_behalf_of,
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
    on_behalf_of: str | None,
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
            raise ExpertStateConflict(f"expert {expert_id} ({expert.name!r}) is already {to.value}")
        if to is ExpertStatus.INACTIVE and expert.status is not ExpertStatus.ACTIVE:
            raise ExpertStateConflict(
                f"expert {expert_id} ({expert.name!r}) is {expert.status.value}, not active; activate it once its files are restored"
            )
        edits = store.edits_of_expert(session, expert_id=expert_id)
        if to is ExpertStatus.ACTIVE:
            _refuse_retracted(expert, edits)
        store.set_expert_status(session, expert_id=expert_id, status=to)
        changed = [e.id for e in edits if e.status is edits_from]
        store.set_edit_status(session, edit_ids=changed, status=edits_to)
        store.append_audit(
            session,
            actor=actor,
            action=expert_action,
            expert_id=expert_id,
            payload={"name": expert.name, "edit_ids": changed},
            on_behalf_of=on_behalf_of,
        )
        for edit_id in changed:
            store.append_audit(session, actor=actor, action=edit_action, edit_id=edit_id, expert_id=expert_id, on_behalf_of=on_behalf_of)
        # Load (and check) the new stack before committing: a bad file of the expert being
        # activated (ExpertFilesInvalid, 409) leaves both SQL and the live stack as they were.
        # Another active expert's bad file does not block the change: it stays quarantined.
        try:
            stack.apply(
                store.list_experts(session, status=ExpertStatus.ACTIVE),
                required=expert_id if to is ExpertStatus.ACTIVE else None,
            )
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
        stack.report_quarantined()
        return ExpertChangeResult(
            expert=expert,
            edit_ids=[e.id for e in edits],
            changed_edit_ids=changed,
            edit_status=edits_to,
            active_experts=stack.active_names(),
        )


def _refuse_retracted(expert: store.Expert, edits: list[store.Edit]) -> None:
    """An expert holding retracted edits still has their anchors: activating it would serve
    them again (and its kept edits twice, beside the expert that replaced it)."""
    retracted = [e.id for e in edits if e.status is EditStatus.RETRACTED]
    if expert.replaced_by_id is not None:
        raise ExpertStateConflict(
            f"expert {expert.id} ({expert.name!r}) was replaced by expert {expert.replaced_by_id} when edits "
            f"{retracted} were retracted; activating it would serve them again (expert {expert.replaced_by_id} "
            "holds its other edits)"
        )
    if retracted:
        raise ExpertStateConflict(
            f"expert {expert.id} ({expert.name!r}) was deactivated when its edits {retracted} were retracted; "
            "activating it would serve them again"
        )


# --- offline operations (`lemoe experts check | quarantine`) ---------------------------------


@dataclass(frozen=True)
class ExpertCheck:
    expert_id: int
    name: str
    status: ExpertStatus
    path: str  # relative to the data dir
    problem: str | None  # None: the files load and match the SQL row


def check_experts(session: Session, *, settings: Settings, all_experts: bool = False) -> list[ExpertCheck]:
    """Load each active expert's files (every expert with `all_experts`) and check them against
    its row: sha256, name, readable config and tensors. Needs no model."""
    from app.engine.experts import ExpertFileError, ExpertSpec, check_expert_files

    checks = []
    for expert in store.list_experts(session, status=None if all_experts else ExpertStatus.ACTIVE):
        problem = None
        try:
            check_expert_files(ExpertSpec(name=expert.name, path=resolve_path(settings, expert.path), sha256=expert.sha256))
        except ExpertFileError as exc:
            problem = exc.reason
        checks.append(ExpertCheck(expert.id, expert.name, expert.status, shown_path(settings, expert.path), problem))
    return checks


def find_expert(session: Session, *, name_or_id: str) -> store.Expert:
    """By id (all digits) or by name; NotFound names what was asked for."""
    expert = None
    if name_or_id.isdigit() and int(name_or_id) <= MAX_ID:
        expert = store.get_expert(session, expert_id=int(name_or_id))
    if expert is None:
        expert = store.get_expert_by_name(session, name=name_or_id)
    if expert is None:
        raise NotFound(f"no expert has the id or name {name_or_id!r}; `lemoe experts check --all` lists them")
    return expert


def quarantine_expert(session: Session, *, name_or_id: str, reason: str, actor: str) -> ExpertChangeResult:
    """Take an expert out of the active set for every process (its files are bad): status
    quarantined, the stack version bumped (replicas reload without it), its applied edits
    rolled_back as on deactivate, with the audit events, in one transaction. Activating it
    again (once its files are restored) checks them and re-applies its edits."""
    expert = find_expert(session, name_or_id=name_or_id)
    if expert.status is ExpertStatus.QUARANTINED:
        raise ExpertStateConflict(f"expert {expert.id} ({expert.name!r}) is already quarantined")
    previous = expert.status
    store.set_expert_status(session, expert_id=expert.id, status=ExpertStatus.QUARANTINED)
    edits = store.edits_of_expert(session, expert_id=expert.id)
    changed = [e.id for e in edits if e.status is EditStatus.APPLIED]
    store.set_edit_status(session, edit_ids=changed, status=EditStatus.ROLLED_BACK)
    store.append_audit(
        session,
        actor=actor,
        action=AuditAction.EXPERT_QUARANTINED,
        expert_id=expert.id,
        payload={
            "name": expert.name,
            "reason": reason,
            "previous_status": previous.value,
            "edit_ids": changed,
        },
    )
    for edit_id in changed:
        store.append_audit(
            session,
            actor=actor,
            action=AuditAction.EDIT_ROLLED_BACK,
            edit_id=edit_id,
            expert_id=expert.id,
            payload={"reason": f"expert quarantined: {reason}"},
        )
    session.commit()
    return ExpertChangeResult(
        expert=expert,
        edit_ids=[e.id for e in edits],
        changed_edit_ids=changed,
        edit_status=EditStatus.ROLLED_BACK,
        active_experts=[e.name for e in store.list_experts(session, status=ExpertStatus.ACTIVE)],
    )
