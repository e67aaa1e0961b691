"""Submitting fact edits and reading their history."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from app import store
from app.config import Settings
from app.domain import AuditAction, EditStatus
from app.errors import EditNotFound, InvalidInput
from app.services.checks import check_filter, check_storable, check_text, store_errors, to_utc
from app.services.params import EditDraft

if TYPE_CHECKING:
    from app.engine.engine import Engine


def _checked(draft: EditDraft, *, prefix: str, settings: Settings, engine: Engine) -> store.NewEdit:
    limit = settings.max_text_chars
    prompt = check_text(draft.prompt, field=f"{prefix}prompt", max_chars=limit)
    target = check_text(draft.target, field=f"{prefix}target", max_chars=limit)
    subject = None
    if draft.subject is not None:
        subject = check_text(draft.subject, field=f"{prefix}subject", max_chars=limit)
    if len(draft.rephrases) > settings.max_rephrases:
        raise InvalidInput(
            f"{prefix}rephrases has {len(draft.rephrases)} entries; at most "
            f"{settings.max_rephrases} are allowed"
        )
    rephrases = tuple(
        check_text(r, field=f"{prefix}rephrases[{i}]", max_chars=limit)
        for i, r in enumerate(draft.rephrases)
    )
    # The model's own limits (e.g. its context length), for the prompt and every rephrase.
    for field, text in [("prompt", prompt)] + [(f"rephrases[{i}]", r) for i, r in enumerate(rephrases)]:
        try:
            engine.validate_edit(text, target)
        except ValueError as exc:
            raise InvalidInput(f"{prefix}{field}: {exc}") from None
    if subject is not None:
        try:
            engine.validate_subject(prompt, subject)
        except ValueError as exc:
            raise InvalidInput(f"{prefix}subject: {exc}") from None
    return store.NewEdit(prompt=prompt, target=target, subject=subject, rephrases=rephrases)


def submit_edits(
    session: Session, *, engine: Engine, settings: Settings, actor: str, drafts: Sequence[EditDraft]
) -> list[store.Edit]:
    """Validate and queue edits as pending; committed (with one edit.submitted event each) on return."""
    if not drafts:
        raise InvalidInput("no edits given: send one edit object or a non-empty JSON array of them")
    if len(drafts) > settings.max_edits_per_request:
        raise InvalidInput(
            f"{len(drafts)} edits in one request; at most {settings.max_edits_per_request} are allowed"
        )
    many = len(drafts) > 1
    new = [
        _checked(d, prefix=f"edits[{i}]." if many else "", settings=settings, engine=engine)
        for i, d in enumerate(drafts)
    ]
    rows = store.add_edits(session, edits=new)
    for row in rows:
        store.append_audit(
            session,
            actor=actor,
            action=AuditAction.EDIT_SUBMITTED,
            edit_id=row.id,
            payload={
                "prompt": row.prompt,
                "target": row.target,
                "subject": row.subject,
                "rephrases": len(row.rephrases),
            },
        )
    session.commit()
    return rows


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
