"""Queries on edits. Every function adds and flushes; the caller commits (with its audit event)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, func, insert, or_, select, update
from sqlalchemy.orm import Session

from app.domain import EditStatus, ExpertStatus, SubjectSource
from app.store.errors import InvalidTransition, RecordNotFound
from app.store.models import Edit, Expert, TrainingRun
from app.store.pagination import DEFAULT_LIMIT, Page, paginate
from app.store.runs import ACTIVE_RUN_STATUSES
from app.store.types import coerce_enum, require_aware, utcnow


def pending_edit(prompt: str, target: str, subject: str | None = None, rephrases: Sequence[str] = ()) -> Edit:
    """A new edit row, pending, not yet stored (`add_edits` stores it); the caller has checked
    its texts."""
    return Edit(
        prompt=prompt,
        target=target,
        subject=subject,
        subject_source=None if subject is None else SubjectSource.CLIENT,
        rephrases=list(rephrases),
        status=EditStatus.PENDING,
    )


def add_edits(session: Session, *, edits: Sequence[Edit]) -> list[Edit]:
    """Store new edit rows (from `pending_edit`) in one INSERT; the stored rows are returned
    with their ids, in the given order (the objects passed in are only read)."""
    if not edits:
        return []
    now = utcnow()
    values = [
        {
            "prompt": e.prompt,
            "target": e.target,
            "subject": e.subject,
            "subject_source": e.subject_source,
            "rephrases": list(e.rephrases or []),
            "status": e.status or EditStatus.PENDING,
            "created_at": now,
            "updated_at": now,
        }
        for e in edits
    ]
    return list(session.scalars(insert(Edit).returning(Edit, sort_by_parameter_order=True), values))


def get_edit(session: Session, *, edit_id: int) -> Edit | None:
    return session.get(Edit, edit_id)


def _filtered_edits(
    *,
    status: EditStatus | str | None,
    subject: str | None,
    search: str | None,
    created_after: datetime | None,
    created_before: datetime | None,
    expert_id: int | None,
    training_run_id: int | None,
) -> Select[tuple[Edit]]:
    stmt = select(Edit)
    if status is not None:
        stmt = stmt.where(Edit.status == coerce_enum(EditStatus, status))
    if subject:
        # Case-insensitive equality; both sides lowered by the database, so they agree.
        stmt = stmt.where(func.lower(Edit.subject) == func.lower(subject))
    if search and search.strip():
        term = search.strip()
        stmt = stmt.where(
            or_(
                Edit.prompt.icontains(term, autoescape=True),
                Edit.target.icontains(term, autoescape=True),
                Edit.subject.icontains(term, autoescape=True),
            )
        )
    if created_after is not None:
        stmt = stmt.where(Edit.created_at >= require_aware(created_after, name="created_after"))
    if created_before is not None:
        stmt = stmt.where(Edit.created_at < require_aware(created_before, name="created_before"))
    if expert_id is not None:
        stmt = stmt.where(Edit.expert_id == expert_id)
    if training_run_id is not None:
        stmt = stmt.where(Edit.training_run_id == training_run_id)
    return stmt


def list_edits(
    session: Session,
    *,
    status: EditStatus | str | None = None,
    subject: str | None = None,
    search: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    expert_id: int | None = None,
    training_run_id: int | None = None,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> Page[Edit]:
    """Edits, newest first.

    `subject` matches exactly but case-insensitively; `search` is a case-insensitive substring of
    prompt, target or subject; `created_after` is inclusive and `created_before` exclusive, so
    adjacent windows neither overlap nor leave gaps. Empty strings mean "no filter".
    """
    stmt = _filtered_edits(
        status=status,
        subject=subject,
        search=search,
        created_after=created_after,
        created_before=created_before,
        expert_id=expert_id,
        training_run_id=training_run_id,
    )
    return paginate(session, stmt, Edit.id, kind="edits", order="desc", limit=limit, cursor=cursor)


def count_edits(session: Session, *, status: EditStatus | str | None = None) -> int:
    """How many edits have `status` (all edits when None)."""
    stmt = select(func.count()).select_from(Edit)
    if status is not None:
        stmt = stmt.where(Edit.status == coerce_enum(EditStatus, status))
    return session.execute(stmt).scalar_one()


def claim_pending_edits(session: Session, *, run_id: int, limit: int) -> list[Edit]:
    """Move up to `limit` of the oldest pending edits to planned, owned by run `run_id`.

    On PostgreSQL the candidates are locked with FOR UPDATE SKIP LOCKED, so concurrent claimers
    take disjoint rows without waiting. SQLite has a single writer; there the UPDATE re-checks
    that a row is still pending, and the loop takes the next ones when another claimer won.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    run = session.get(TrainingRun, run_id)
    if run is None:
        raise RecordNotFound(f"training run {run_id} does not exist")
    if run.status not in ACTIVE_RUN_STATUSES:
        raise InvalidTransition(
            f"training run {run_id} is {run.status.value}; edits can only be claimed by a "
            f"{' or '.join(s.value for s in ACTIVE_RUN_STATUSES)} run"
        )
    claimed: list[Edit] = []
    for _ in range(10):  # two rounds at most in practice; the bound only guards against bugs
        wanted = limit - len(claimed)
        candidates = list(
            session.scalars(
                select(Edit.id).where(Edit.status == EditStatus.PENDING).order_by(Edit.id).limit(wanted).with_for_update(skip_locked=True)
            )
        )
        if not candidates:
            break
        won = session.scalars(
            update(Edit)
            .where(Edit.id.in_(candidates), Edit.status == EditStatus.PENDING)
            .values(status=EditStatus.PLANNED, training_run_id=run_id, updated_at=utcnow())
            .returning(Edit)
            .execution_options(populate_existing=True)
        ).all()
        claimed.extend(won)
        if len(claimed) >= limit or len(won) == len(candidates):
            break
    return sorted(claimed, key=lambda edit: edit.id)


def set_edit_status(
    session: Session,
    *,
    edit_ids: Iterable[int],
    status: EditStatus | str,
    expert_id: int | None = None,
    error: str | None = None,
) -> list[Edit]:
    """Set the status of the given edits; all must exist (RecordNotFound names the missing ids).

    `applied_at` is set when the status becomes applied; `updated_at` always. `expert_id`, when
    given, records which expert holds the edits (it is kept otherwise, e.g. on rollback); `error`
    replaces the stored error, so None clears it.
    """
    status = coerce_enum(EditStatus, status)
    ids = sorted(set(edit_ids))
    if not ids:
        return []
    edits = list(session.scalars(select(Edit).where(Edit.id.in_(ids)).order_by(Edit.id)))
    missing = sorted(set(ids) - {edit.id for edit in edits})
    if missing:
        raise RecordNotFound(f"edits do not exist: {missing}")
    now = utcnow()
    for edit in edits:
        edit.status = status
        edit.updated_at = now
        edit.error = error
        if expert_id is not None:
            edit.expert_id = expert_id
        if status is EditStatus.APPLIED:
            edit.applied_at = now
    session.flush()
    return edits


def set_inferred_subject(session: Session, *, edit_id: int, subject: str) -> Edit | None:
    """Give an edit that has no subject the one the server inferred (source `inferred`).

    The UPDATE re-checks that the edit still has none, so a subject already there (the client's,
    or one inferred before) is never replaced: None then, and nothing changes.
    """
    if not isinstance(subject, str) or not subject.strip():
        raise ValueError(f"subject must be a non-empty string, got {subject!r}")
    return session.scalars(
        update(Edit)
        .where(Edit.id == edit_id, Edit.subject.is_(None))
        .values(subject=subject, subject_source=SubjectSource.INFERRED, updated_at=utcnow())
        .returning(Edit)
        .execution_options(populate_existing=True)
    ).one_or_none()


def change_status_if(session: Session, *, edit_id: int, current: EditStatus, to: EditStatus, error: str | None = None) -> Edit | None:
    """`current` -> `to` (and `error`, None clearing it) in one conditional UPDATE; None when
    the edit is no longer `current` (another request or the trainer changed it first), and
    nothing changes."""
    return session.scalars(
        update(Edit)
        .where(Edit.id == edit_id, Edit.status == current)
        .values(status=to, error=error, updated_at=utcnow())
        .returning(Edit)
        .execution_options(populate_existing=True)
    ).one_or_none()


def hold_in_status(session: Session, *, edit_ids: Sequence[int], status: EditStatus) -> set[int]:
    """Which of `edit_ids` still have `status`, holding them there until the transaction ends: a
    touching UPDATE takes their row locks (PostgreSQL) and the write lock (SQLite), so a
    concurrent status change waits and then sees what this transaction commits."""
    if not edit_ids:
        return set()
    held = session.scalars(
        update(Edit)
        .where(Edit.id.in_(sorted(set(edit_ids))), Edit.status == status)
        .values(updated_at=utcnow())
        .returning(Edit.id)
        .execution_options(synchronize_session=False)
    )
    return set(held)


def move_planned_to_training(session: Session, *, edit_ids: Sequence[int]) -> set[int]:
    """planned -> training for those of `edit_ids` still planned (a client may have cancelled
    some); returns their ids."""
    if not edit_ids:
        return set()
    moved = session.scalars(
        update(Edit)
        .where(Edit.id.in_(sorted(set(edit_ids))), Edit.status == EditStatus.PLANNED)
        .values(status=EditStatus.TRAINING, updated_at=utcnow())
        .returning(Edit.id)
        .execution_options(synchronize_session=False)
    )
    return set(moved)


def experts_with_retractions(session: Session) -> list[int]:
    """Ids of the active experts holding a retracting edit, oldest request first (an inactive
    expert's retractions wait until it is active again: nothing serves them meanwhile)."""
    stmt = (
        select(Edit.expert_id, func.min(Edit.updated_at))
        .join(Expert, Expert.id == Edit.expert_id)
        .where(Edit.status == EditStatus.RETRACTING, Expert.status == ExpertStatus.ACTIVE)
        .group_by(Edit.expert_id)
        .order_by(func.min(Edit.updated_at), Edit.expert_id)
    )
    return [expert_id for expert_id, _ in session.execute(stmt)]


def edits_of_expert(session: Session, *, expert_id: int) -> list[Edit]:
    """The edits an expert was trained on (or holds now), oldest first."""
    stmt = select(Edit).where(Edit.expert_id == expert_id)
    return list(session.scalars(stmt.order_by(Edit.id)))


@dataclass(frozen=True)
class RetriedEdit:
    """A failed edit put back in the queue, and what it carried before (for the audit event)."""

    edit: Edit
    previous_error: str | None
    previous_training_run_id: int | None


def retry_failed_edit(session: Session, *, edit_id: int) -> RetriedEdit:
    """Return a failed edit to pending: its error and run/expert links are cleared, as on a fresh
    submission, so the next run claims it.

    RecordNotFound for an unknown id; InvalidTransition, naming the current status, for an edit
    that is not failed. The UPDATE re-checks the status, so of two concurrent retries one wins.
    """
    edit = session.scalars(select(Edit).where(Edit.id == edit_id).with_for_update().execution_options(populate_existing=True)).one_or_none()
    if edit is None:
        raise RecordNotFound(f"edit {edit_id} does not exist")
    previous_error, previous_run = edit.error, edit.training_run_id
    won = None
    if edit.status is EditStatus.FAILED:
        won = session.scalars(
            update(Edit)
            .where(Edit.id == edit_id, Edit.status == EditStatus.FAILED)
            .values(
                status=EditStatus.PENDING,
                error=None,
                training_run_id=None,
                expert_id=None,
                applied_at=None,
                updated_at=utcnow(),
            )
            .returning(Edit)
            .execution_options(populate_existing=True)
        ).one_or_none()
    if won is None:
        session.refresh(edit)
        raise InvalidTransition(
            f"edit {edit_id} is {edit.status.value}; only a {EditStatus.FAILED.value} edit can be "
            f"retried (it goes back to {EditStatus.PENDING.value})"
        )
    return RetriedEdit(edit=won, previous_error=previous_error, previous_training_run_id=previous_run)


def edits_by_ids(session: Session, *, edit_ids: Sequence[int]) -> list[Edit]:
    """The edits with these ids, in the given order; RecordNotFound names any that are missing."""
    ids = list(edit_ids)
    if not ids:
        return []
    found = {edit.id: edit for edit in session.scalars(select(Edit).where(Edit.id.in_(ids)))}
    missing = sorted(set(ids) - set(found))
    if missing:
        raise RecordNotFound(f"edits do not exist: {missing}")
    return [found[i] for i in ids]
