"""Queries on experts. Changing which experts are active also bumps the stack version."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.domain import ExpertStatus
from app.store.errors import RecordNotFound
from app.store.models import NAME_LENGTH, Expert
from app.store.stack import bump_stack_version
from app.store.types import coerce_enum, utcnow

SHA256_RE = re.compile(r"[0-9a-f]{64}")


def _check_name(name: Any) -> str:
    """An expert's name is the name of its directory: one plain path component."""
    if (
        not isinstance(name, str)
        or not name.strip()
        or len(name) > NAME_LENGTH
        or name in (".", "..")
        or any(sep in name for sep in ("/", "\\", "\0"))
    ):
        raise ValueError(
            f"invalid expert name {name!r}: must be 1-{NAME_LENGTH} characters, a single directory name (no '/', '\\', or '.'/'..')"
        )
    return name


def add_expert(
    session: Session,
    *,
    name: str,
    path: str,
    sha256: str,
    edit_count: int = 0,
    training_run_id: int | None = None,
    final_loss: float | None = None,
    steps: int | None = None,
    metrics: dict[str, Any] | None = None,
    live_check: dict[str, Any] | None = None,
    status: ExpertStatus | str = ExpertStatus.INACTIVE,
    stack_order: int | None = None,
) -> Expert:
    """Register a trained expert whose files are already on disk; ACTIVE also activates it.
    `stack_order`: its place in the stack (None: its own id, after every expert so far)."""
    name = _check_name(name)
    status = coerce_enum(ExpertStatus, status)
    if not isinstance(path, str) or not path:
        raise ValueError(f"path must be a non-empty string, got {path!r}")
    if not isinstance(sha256, str) or not SHA256_RE.fullmatch(sha256):
        raise ValueError(f"sha256 must be 64 lowercase hex characters, got {sha256!r}")
    if get_expert_by_name(session, name=name) is not None:
        raise ValueError(f"an expert named {name!r} already exists")
    now = utcnow()
    expert = Expert(
        name=name,
        path=path,
        sha256=sha256,
        status=status,
        edit_count=edit_count,
        training_run_id=training_run_id,
        final_loss=final_loss,
        steps=steps,
        metrics=metrics,
        live_check=live_check,
        created_at=now,
        activated_at=now if status is ExpertStatus.ACTIVE else None,
    )
    session.add(expert)
    session.flush()
    expert.stack_order = expert.id if stack_order is None else stack_order
    session.flush()
    if status is ExpertStatus.ACTIVE:
        bump_stack_version(session)
    return expert


def get_expert(session: Session, *, expert_id: int) -> Expert | None:
    return session.get(Expert, expert_id)


def get_expert_by_name(session: Session, *, name: str) -> Expert | None:
    return session.scalars(select(Expert).where(Expert.name == name)).one_or_none()


def list_experts(session: Session, *, status: ExpertStatus | str | None = None) -> list[Expert]:
    """Experts in stack order, oldest first (the order the engine stacks them in; an expert that
    replaced another stands in its place)."""
    stmt = select(Expert).order_by(Expert.stack_order, Expert.id)
    if status is not None:
        stmt = stmt.where(Expert.status == coerce_enum(ExpertStatus, status))
    return list(session.scalars(stmt))


def set_expert_status(session: Session, *, expert_id: int, status: ExpertStatus | str) -> Expert:
    """Activate or deactivate an expert; a real change stamps the time and bumps the stack version.

    Setting the status it already has changes nothing (the caller decides if that is an error).
    """
    status = coerce_enum(ExpertStatus, status)
    expert = get_expert(session, expert_id=expert_id)
    if expert is None:
        raise RecordNotFound(f"expert {expert_id} does not exist")
    if expert.status is status:
        return expert
    now = utcnow()
    expert.status = status
    if status is ExpertStatus.ACTIVE:
        expert.activated_at = now
    else:
        expert.deactivated_at = now
    session.flush()
    bump_stack_version(session)
    return expert


def deactivate_if_active(session: Session, *, expert_id: int) -> Expert | None:
    """Active -> inactive in one conditional UPDATE (it takes the row's lock, and SQLite's write
    lock, before anything is read), bumping the stack version; None when the expert is not
    active (any more), and nothing changes."""
    expert = session.scalars(
        update(Expert)
        .where(Expert.id == expert_id, Expert.status == ExpertStatus.ACTIVE)
        .values(status=ExpertStatus.INACTIVE, deactivated_at=utcnow())
        .returning(Expert)
        .execution_options(populate_existing=True)
    ).one_or_none()
    if expert is not None:
        bump_stack_version(session)
    return expert
