"""Submitting fact edits and reading their history."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import store
from app.config import Settings
from app.domain import AuditAction, EditStatus
from app.errors import EditNotFound, EditStateConflict, IdempotencyKeyReused, InvalidInput
from app.schemas.edits import EditCreate
from app.services.checks import check_filter, check_text, store_errors, to_utc

if TYPE_CHECKING:
    from app.engine.engine import Engine


@dataclass(frozen=True)
class _Texts:
    """One draft's texts, checked as text (not yet against the model)."""

    prompt: str
    target: str
    subject: str | None
    rephrases: tuple[str, ...]


def _texts(draft: EditCreate, *, prefix: str, settings: Settings) -> _Texts:
    limit = settings.max_text_chars
    prompt = check_text(draft.prompt, field=f"{prefix}prompt", max_chars=limit)
    target = check_text(draft.target, field=f"{prefix}target", max_chars=limit)
    subject = None
    if draft.subject is not None:
        subject = check_text(draft.subject, field=f"{prefix}subject", max_chars=limit)
    if len(draft.rephrases) > settings.max_rephrases:
        raise InvalidInput(f"{prefix}rephrases has {len(draft.rephrases)} entries; at most {settings.max_rephrases} are allowed")
    rephrases = tuple(check_text(r, field=f"{prefix}rephrases[{i}]", max_chars=limit) for i, r in enumerate(draft.rephrases))
    return _Texts(prompt, target, subject, rephrases)


def _checked(drafts: Sequence[EditCreate], *, settings: Settings, engine: Engine) -> list[store.Edit]:
    """The drafts as new edit rows, or InvalidInput for the first problem in request order (per
    edit: its texts, then the model's limits for its prompt and each rephrase, then its subject).
    The model's limits of all edits are checked in one batch: a tokenizer call per text is most
    of what a bulk submission costs otherwise."""
    many = len(drafts) > 1
    prefixes = [f"edits[{i}]." if many else "" for i in range(len(drafts))]
    checked: list[_Texts] = []
    text_problem: InvalidInput | None = None
    for draft, prefix in zip(drafts, prefixes, strict=False):
        try:
            checked.append(_texts(draft, prefix=prefix, settings=settings))
        except InvalidInput as exc:
            text_problem = exc  # reported after any earlier edit's problem
            break
    problems = iter(engine.validate_edits([(text, c.target) for c in checked for text in (c.prompt, *c.rephrases)]))
    for c, prefix in zip(checked, prefixes, strict=False):
        for field in ["prompt"] + [f"rephrases[{i}]" for i in range(len(c.rephrases))]:
            problem = next(problems)
            if problem is not None:
                raise InvalidInput(f"{prefix}{field}: {problem}")
        if c.subject is not None:
            try:
                engine.validate_subject(c.prompt, c.subject)
            except ValueError as exc:
                raise InvalidInput(f"{prefix}subject: {exc}") from None
    if text_problem is not None:
        raise text_problem
    return [store.pending_edit(c.prompt, c.target, c.subject, c.rephrases) for c in checked]


@dataclass(frozen=True)
class SubmittedEdits:
    edits: list[store.Edit]
    replayed: bool = False  # a repeat of an Idempotency-Key: an earlier request created these


def request_sha256(drafts: Sequence[EditCreate]) -> str:
    """The hash of a canonical form of the validated body: one object and a list of just that
    object are the same request; key order and whitespace of the JSON do not matter."""
    canonical = [{"prompt": d.prompt, "target": d.target, "subject": d.subject, "rephrases": list(d.rephrases)} for d in drafts]
    text = json.dumps(canonical, ensure_ascii=True, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _earlier(session: Session, *, actor: str, key: str, digest: str) -> SubmittedEdits | None:
    """The edits an earlier request with this actor's `key` created, or None if it is new."""
    record = store.get_idempotency_key(session, actor=actor, key=key)
    if record is None:
        return None
    if record.request_sha256 != digest:
        raise IdempotencyKeyReused(key)
    return SubmittedEdits(edits=store.edits_by_ids(session, edit_ids=record.edit_ids), replayed=True)


def submit_edits(
    session: Session,
    *,
    engine: Engine,
    settings: Settings,
    actor: str,
    edits: Sequence[EditCreate],
    idempotency_key: str | None = None,
    on_behalf_of: str | None = None,
) -> SubmittedEdits:
    """Validate and queue edits as pending; committed (with one edit.submitted event each) on return.

    With `idempotency_key`, the key is recorded in the same transaction; a later request of the
    same actor with the same key and body gets the same edits back (nothing new is written), one
    with another body is refused. Of two concurrent first requests, the unique (actor, key)
    constraint lets one commit; the other rolls back and answers with the winner's edits.
    """
    if not edits:
        raise InvalidInput("no edits given: send one edit object or a non-empty JSON array of them")
    if len(edits) > settings.max_edits_per_request:
        raise InvalidInput(f"{len(edits)} edits in one request; at most {settings.max_edits_per_request} are allowed")
    digest = ""
    if idempotency_key is not None:
        digest = request_sha256(edits)
        earlier = _earlier(session, actor=actor, key=idempotency_key, digest=digest)
        if earlier is not None:
            return earlier
    rows = store.add_edits(session, edits=_checked(edits, settings=settings, engine=engine))
    store.append_audits(
        session,
        actor=actor,
        action=AuditAction.EDIT_SUBMITTED,
        events=[
            store.NewAuditEvent(
                edit_id=row.id,
                payload={"prompt": row.prompt, "target": row.target, "subject": row.subject, "rephrases": len(row.rephrases)},
            )
            for row in rows
        ],
        on_behalf_of=on_behalf_of,
    )
    if idempotency_key is None:
        session.commit()
        return SubmittedEdits(edits=rows)
    return _commit_with_key(session, actor=actor, key=idempotency_key, digest=digest, rows=rows)


def _commit_with_key(session: Session, *, actor: str, key: str, digest: str, rows: list[store.Edit]) -> SubmittedEdits:
    """Record the key with the new edits and commit them together; if a concurrent request
    with the same key committed first, roll ours back whole and answer with its edits."""
    try:
        store.add_idempotency_key(session, actor=actor, key=key, request_sha256=digest, edit_ids=[r.id for r in rows])
        session.commit()
    except IntegrityError:
        session.rollback()
        earlier = _earlier(session, actor=actor, key=key, digest=digest)
        if earlier is None:
            raise  # some other constraint failed
        return earlier
    return SubmittedEdits(edits=rows)


def retry_edit(session: Session, *, actor: str, edit_id: int, on_behalf_of: str | None = None) -> store.Edit:
    """Send a failed edit back to pending for the next run; committed with its edit.retried event
    (which keeps the error it failed with)."""
    try:
        retried = store.retry_failed_edit(session, edit_id=edit_id)
    except store.RecordNotFound:
        raise EditNotFound(edit_id) from None
    except store.InvalidTransition as exc:
        raise EditStateConflict(str(exc)) from None
    store.append_audit(
        session,
        actor=actor,
        action=AuditAction.EDIT_RETRIED,
        edit_id=edit_id,
        training_run_id=retried.previous_training_run_id,
        payload={"previous_error": retried.previous_error},
        on_behalf_of=on_behalf_of,
    )
    session.commit()
    return retried.edit


# DELETE /v1/edits/{id}: what it does to an edit in each status; any other status is a 409.
CANCELLABLE = (EditStatus.PENDING, EditStatus.PLANNED, EditStatus.TRAINING)
WHY_NOT_WITHDRAWN = {
    EditStatus.CANCELLED: "cancelled (final): it was withdrawn before training and nothing serves it",
    EditStatus.RETRACTED: "retracted (final): its expert was retrained without it and nothing serves it",
    EditStatus.RETRACTING: "already retracting: its expert is being retrained without it and serves it "
    "until the replacement is live; follow it with GET /v1/edits/{id}",
    EditStatus.FAILED: "failed: nothing serves it, so there is nothing to cancel or retract; POST /v1/edits/{id}/retry queues it again",
    EditStatus.ROLLED_BACK: "rolled_back: its expert is deactivated, so nothing serves it; activate the "
    "expert first to retract this edit alone",
}


@dataclass(frozen=True)
class Withdrawn:
    edit: store.Edit
    previous_status: EditStatus

    @property
    def cancelled(self) -> bool:
        return self.edit.status is EditStatus.CANCELLED


def withdraw_edit(session: Session, *, actor: str, edit_id: int, on_behalf_of: str | None = None) -> Withdrawn:
    """DELETE /v1/edits/{id}, committed with its audit event: a pending, planned or training
    edit is cancelled (no expert will serve it; a run that claimed it drops it), an applied one
    becomes retracting (the trainer retrains its expert without it, swaps the replacement in,
    then marks it retracted). EditStateConflict for any other status, saying why.

    Each change is one conditional UPDATE, so a race with the trainer (planned -> training,
    training -> applied) is decided by the database; the loser reads the edit again."""
    for _ in range(5):
        edit = store.get_edit(session, edit_id=edit_id)
        if edit is None:
            raise EditNotFound(edit_id)
        session.refresh(edit)
        current = edit.status
        if current in CANCELLABLE:
            to, action = EditStatus.CANCELLED, AuditAction.EDIT_CANCELLED
        elif current is EditStatus.APPLIED:
            to, action = EditStatus.RETRACTING, AuditAction.EDIT_RETRACTION_REQUESTED
        else:
            raise EditStateConflict(f"edit {edit_id} is " + WHY_NOT_WITHDRAWN[current].replace("{id}", str(edit_id)))
        changed = store.change_status_if(session, edit_id=edit_id, current=current, to=to)
        if changed is None:
            session.rollback()
            continue
        store.append_audit(
            session,
            actor=actor,
            action=action,
            edit_id=edit_id,
            expert_id=changed.expert_id,
            training_run_id=changed.training_run_id,
            payload={"previous_status": current.value},
            on_behalf_of=on_behalf_of,
        )
        session.commit()
        return Withdrawn(edit=changed, previous_status=current)
    raise EditStateConflict(f"edit {edit_id} kept changing status while it was being withdrawn; try again")


def get_edit(session: Session, *, edit_id: int) -> store.Edit:
    edit = store.get_edit(session, edit_id=edit_id)
    if edit is None:
        raise EditNotFound(edit_id)
    return edit


def list_edits(
    session: Session,
    *,
    settings: Settings,
    status: EditStatus | None = None,
    subject: str | None = None,
    search: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    expert_id: int | None = None,
    training_run_id: int | None = None,
    limit: int = store.DEFAULT_LIMIT,
    cursor: str | None = None,
) -> store.Page[store.Edit]:
    """Edits, newest first; `subject` matches exactly (any case), `search` is a substring."""
    subject = check_filter(subject, field="subject", max_chars=settings.max_text_chars)
    search = check_filter(search, field="q", max_chars=settings.max_text_chars)
    with store_errors():
        return store.list_edits(
            session,
            status=status,
            subject=subject,
            search=search,
            created_after=to_utc(created_after, field="created_after"),
            created_before=to_utc(created_before, field="created_before"),
            expert_id=expert_id,
            training_run_id=training_run_id,
            limit=limit,
            cursor=cursor or None,
        )


def edit_events(
    session: Session, *, edit_id: int, limit: int = store.DEFAULT_LIMIT, cursor: str | None = None
) -> store.Page[store.AuditEvent]:
    """The audit events of one edit, oldest first."""
    get_edit(session, edit_id=edit_id)
    with store_errors():
        return store.list_audit(session, edit_id=edit_id, order="asc", limit=limit, cursor=cursor or None)
