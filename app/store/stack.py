"""The active-stack version: API replicas reload their experts when it changes."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.store.models import StackState
from app.store.types import utcnow

STACK_ROW_ID = 1


def bump_stack_version(session: Session) -> int:
    """Increase the version by one (atomically, under the row's lock) and return the new value."""
    now = utcnow()
    version = session.execute(
        update(StackState)
        .where(StackState.id == STACK_ROW_ID)
        .values(version=StackState.version + 1, updated_at=now)
        .returning(StackState.version)
    ).scalar_one_or_none()
    if version is None:
        # The migration inserts the row; a schema made by metadata.create_all() lacks it.
        session.add(StackState(id=STACK_ROW_ID, version=1, updated_at=now))
        session.flush()
        version = 1
    return version


def get_stack_version(session: Session) -> int:
    """The current version (0 before any expert was ever activated)."""
    version = session.execute(select(StackState.version).where(StackState.id == STACK_ROW_ID)).scalar_one_or_none()
    return version or 0
