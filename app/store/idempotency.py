"""Idempotency keys of POST /v1/edits: per actor, the request's hash and the edits it created."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.store.models import IDEMPOTENCY_KEY_LENGTH, IdempotencyKey
from app.store.types import utcnow


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not key or len(key) > IDEMPOTENCY_KEY_LENGTH:
        raise ValueError(f"idempotency key must be a string of 1-{IDEMPOTENCY_KEY_LENGTH} characters, got {key!r}")
    return key


def get_idempotency_key(session: Session, *, actor: str, key: str) -> IdempotencyKey | None:
    """The record of `actor`'s `key`, or None if this actor never used it."""
    stmt = select(IdempotencyKey).where(
        IdempotencyKey.actor == actor,
        IdempotencyKey.key == _check_key(key),
    )
    return session.scalars(stmt.execution_options(populate_existing=True)).one_or_none()


def add_idempotency_key(session: Session, *, actor: str, key: str, request_sha256: str, edit_ids: Sequence[int]) -> IdempotencyKey:
    """Record `actor`'s `key` in the transaction that created `edit_ids`.

    A second record of the same (actor, key) fails with IntegrityError from the unique
    constraint (at this flush, or at commit when a concurrent transaction holds it): the caller
    rolls back and answers with the record that won.
    """
    if not isinstance(request_sha256, str) or len(request_sha256) != 64:
        raise ValueError(f"request_sha256 must be 64 hex characters, got {request_sha256!r}")
    row = IdempotencyKey(
        actor=actor,
        key=_check_key(key),
        request_sha256=request_sha256,
        edit_ids=list(edit_ids),
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row
