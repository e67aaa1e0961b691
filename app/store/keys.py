"""API keys: rows found by the hash of their secret (never by the secret), revoked in place."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from app.store.models import ApiKey
from app.store.types import require_aware, utcnow


def add_api_key(session: Session, *, name: str, prefix: str, sha256: str, scopes: Sequence[str]) -> ApiKey:
    """A new key; a taken name or hash fails with IntegrityError (at this flush or at commit)."""
    if not isinstance(sha256, str) or len(sha256) != 64:
        raise ValueError("sha256 must be 64 hex characters")
    row = ApiKey(name=name, prefix=prefix, sha256=sha256, scopes=list(scopes), created_at=utcnow())
    session.add(row)
    session.flush()
    return row


def get_api_key_by_hash(session: Session, *, sha256: str) -> ApiKey | None:
    """The key whose secret hashes to `sha256` (revoked or not); one lookup on a unique index."""
    stmt = select(ApiKey).where(ApiKey.sha256 == sha256)
    return session.scalars(stmt.execution_options(populate_existing=True)).one_or_none()


def get_api_key_by_name(session: Session, *, name: str) -> ApiKey | None:
    return session.scalars(select(ApiKey).where(ApiKey.name == name)).one_or_none()


def list_api_keys(session: Session) -> list[ApiKey]:
    """Every key, revoked ones included, oldest first."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))


def any_api_key(session: Session) -> bool:
    """Whether any key was ever created (revoked ones count)."""
    return bool(session.scalar(select(exists().where(ApiKey.id.isnot(None)))))


def revoke_api_key(session: Session, *, key: ApiKey) -> ApiKey:
    key.revoked_at = utcnow()
    session.flush()
    return key


def touch_api_key(session: Session, *, key_id: int, at: datetime) -> None:
    """Record a use (a plain UPDATE: no row is loaded again)."""
    session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=require_aware(at, name="at")))
