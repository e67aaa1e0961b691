"""SQLAlchemy models: edits, experts, training runs, the append-only audit log, the stack version,
API keys.

The schema itself is created by the Alembic migration in `migrations/versions`; a test compares
the two so they cannot drift apart.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    event,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Mapper, ORMExecuteState, Session, mapped_column

from app.domain import AuditAction, EditStatus, ExpertStatus, RunStatus, RunTrigger, SubjectSource
from app.store.errors import AuditLogIsAppendOnly
from app.store.types import JSONType, StrEnumType, UTCDateTime, utcnow

# Deterministic constraint names, so later (batch) migrations can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ACTOR_LENGTH = 200
IDEMPOTENCY_KEY_LENGTH = 255
ACTIVE_RUN_CONDITION = "status IN ('queued', 'running')"
ONE_ACTIVE_RUN_INDEX = "uq_training_runs_one_active"
NAME_LENGTH = 200
SUBJECT_SOURCE_LENGTH = 16
KEY_NAME_LENGTH = 100  # a key's name is the actor of its audit events
KEY_PREFIX_LENGTH = 16


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Edit(Base):
    """One requested fact edit and where it stands (pending -> ... -> applied | failed | rolled_back |
    cancelled | retracting -> retracted)."""

    __tablename__ = "edits"
    __table_args__ = (
        # Serves both status filters and the oldest-pending-first claim.
        Index("ix_edits_status_id", "status", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prompt: Mapped[str] = mapped_column(Text)
    target: Mapped[str] = mapped_column(Text)
    subject: Mapped[str | None] = mapped_column(Text, index=True)
    # Where `subject` came from: the client, or the training worker (the edit named none).
    subject_source: Mapped[SubjectSource | None] = mapped_column(StrEnumType(SubjectSource, length=SUBJECT_SOURCE_LENGTH))
    rephrases: Mapped[list[str]] = mapped_column(JSONType, default=list)
    status: Mapped[EditStatus] = mapped_column(StrEnumType(EditStatus), default=EditStatus.PENDING)
    expert_id: Mapped[int | None] = mapped_column(ForeignKey("experts.id"), index=True)
    training_run_id: Mapped[int | None] = mapped_column(ForeignKey("training_runs.id"), index=True)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    applied_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def __repr__(self) -> str:
        return f"Edit(id={self.id!r}, status={self.status!r}, subject={self.subject!r})"


class Expert(Base):
    """A trained expert: a directory of files (config.json + weights.safetensors) and its checksum."""

    __tablename__ = "experts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[ExpertStatus] = mapped_column(StrEnumType(ExpertStatus), default=ExpertStatus.INACTIVE, index=True)
    edit_count: Mapped[int] = mapped_column(Integer, default=0)
    training_run_id: Mapped[int | None] = mapped_column(ForeignKey("training_runs.id"), index=True)
    final_loss: Mapped[float | None] = mapped_column(Float)
    steps: Mapped[int | None] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # Its place in the live stack (later wins among near-equal anchors): its own id, or the place
    # of the expert it replaced (retrained without a retracted edit), so superseding still holds.
    stack_order: Mapped[int | None] = mapped_column(Integer)
    # The expert that replaced it. A plain integer, like the audit log's ids: an SQLite table
    # that other tables reference cannot take a new foreign key without being rebuilt.
    replaced_by_id: Mapped[int | None] = mapped_column(Integer)
    # The check before going live: how it answered its own edits, a fixed locality sample and
    # the nearest live edits (app.engine.checks); null for experts made before the check.
    live_check: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    deactivated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def __repr__(self) -> str:
        return f"Expert(id={self.id!r}, name={self.name!r}, status={self.status!r})"


class TrainingRun(Base):
    """One pass of the worker: claim edits, train experts, register them."""

    __tablename__ = "training_runs"
    # At most one queued or running run, whichever process asks: the database refuses a second.
    __table_args__ = (
        Index(
            ONE_ACTIVE_RUN_INDEX,
            text("(1)"),
            unique=True,
            sqlite_where=text(ACTIVE_RUN_CONDITION),
            postgresql_where=text(ACTIVE_RUN_CONDITION),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[RunStatus] = mapped_column(StrEnumType(RunStatus), default=RunStatus.QUEUED, index=True)
    trigger: Mapped[RunTrigger] = mapped_column(StrEnumType(RunTrigger))
    actor: Mapped[str] = mapped_column(String(ACTOR_LENGTH))
    edits_total: Mapped[int] = mapped_column(Integer, default=0)
    edits_done: Mapped[int] = mapped_column(Integer, default=0)
    # Training steps done, and planned: the steps of the experts trained so far plus each
    # remaining expert's step limit (an upper bound: training stops early at its loss threshold).
    steps_done: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    steps_planned: Mapped[int | None] = mapped_column(Integer)
    current_loss: Mapped[float | None] = mapped_column(Float)
    experts_created: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def __repr__(self) -> str:
        return f"TrainingRun(id={self.id!r}, status={self.status!r})"


class AuditEvent(Base):
    """One line of the append-only audit log.

    The ids are plain indexed integers, not foreign keys, so writing the log never fails or
    blocks because of the row it talks about. Updates and deletes are refused by the ORM (see
    the guards below) and by database triggers (see the migration).
    """

    __tablename__ = "audit_events"
    # AUTOINCREMENT: SQLite never reuses an id, so ids stay strictly monotonic.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(ACTOR_LENGTH), index=True)
    action: Mapped[AuditAction] = mapped_column(StrEnumType(AuditAction, length=64), index=True)
    edit_id: Mapped[int | None] = mapped_column(Integer, index=True)
    expert_id: Mapped[int | None] = mapped_column(Integer, index=True)
    training_run_id: Mapped[int | None] = mapped_column(Integer, index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)

    def __repr__(self) -> str:
        return f"AuditEvent(id={self.id!r}, action={self.action!r}, actor={self.actor!r})"


class IdempotencyKey(Base):
    """A client's Idempotency-Key on POST /v1/edits: the same key and body give the same edits."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("actor", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    actor: Mapped[str] = mapped_column(String(ACTOR_LENGTH))
    key: Mapped[str] = mapped_column(String(IDEMPOTENCY_KEY_LENGTH))
    request_sha256: Mapped[str] = mapped_column(String(64))
    edit_ids: Mapped[list[int]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKey(Base):
    """An API key: its name (the audit actor of whatever it does), scopes and the SHA-256 of its
    secret. The secret itself is never stored; revoking sets revoked_at (the row stays, so its
    name keeps meaning one key in the audit log)."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(KEY_NAME_LENGTH), unique=True)
    # The first characters of the secret, to tell keys apart in lists (not enough to guess it).
    prefix: Mapped[str] = mapped_column(String(KEY_PREFIX_LENGTH))
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def __repr__(self) -> str:  # never the hash
        return f"ApiKey(id={self.id!r}, name={self.name!r}, scopes={self.scopes!r}, revoked={self.revoked_at is not None})"


class StackState(Base):
    """The single row (id=1) whose version changes whenever the set of active experts changes."""

    __tablename__ = "stack_state"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    version: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


def _refuse_audit_change(operation: str, target: AuditEvent) -> None:
    raise AuditLogIsAppendOnly(f"the audit log is append-only: refusing to {operation} audit event {target.id!r}")


@event.listens_for(AuditEvent, "before_update")
def _audit_before_update(mapper: Mapper[Any], connection: Any, target: AuditEvent) -> None:
    _refuse_audit_change("update", target)


@event.listens_for(AuditEvent, "before_delete")
def _audit_before_delete(mapper: Mapper[Any], connection: Any, target: AuditEvent) -> None:
    _refuse_audit_change("delete", target)


@event.listens_for(Session, "do_orm_execute")
def _audit_refuse_bulk_change(state: ORMExecuteState) -> None:
    """Also refuse ORM bulk `update(AuditEvent)` / `delete(AuditEvent)`, which skip the mapper events."""
    if (state.is_update or state.is_delete) and state.bind_mapper is AuditEvent.__mapper__:
        operation = "update" if state.is_update else "delete"
        raise AuditLogIsAppendOnly(f"the audit log is append-only: refusing a bulk {operation}")
