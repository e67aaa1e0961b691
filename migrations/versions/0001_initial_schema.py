"""Initial schema: edits, experts, training runs, append-only audit log, stack version.

Revision ID: 0001
Revises:
Create Date: 2025-11-28

Hand-written and checked against app/store/models.py (tests/store/test_migrations.py compares
the migrated schema with the models on SQLite and PostgreSQL).

The audit log is append-only, also for raw SQL: triggers refuse UPDATE and DELETE (and TRUNCATE
on PostgreSQL). NOTE for later migrations: on SQLite a batch ("copy and swap") migration of
audit_events drops its triggers with the old table; create them again afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def timestamp(name: str, *, nullable: bool) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


PG_AUDIT_FUNCTION = """
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP
        USING HINT = 'audit events are never changed or removed; append a new event instead';
END;
$$
"""
PG_AUDIT_TRIGGERS = (
    "CREATE TRIGGER audit_events_append_only_rows BEFORE UPDATE OR DELETE ON audit_events "
    "FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()",
    "CREATE TRIGGER audit_events_append_only_truncate BEFORE TRUNCATE ON audit_events "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()",
)
SQLITE_AUDIT_TRIGGERS = (
    "CREATE TRIGGER audit_events_append_only_update BEFORE UPDATE ON audit_events "
    "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: UPDATE refused'); END",
    "CREATE TRIGGER audit_events_append_only_delete BEFORE DELETE ON audit_events "
    "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: DELETE refused'); END",
)


def upgrade() -> None:
    dialect = op.get_context().dialect.name

    op.create_table(
        "training_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("trigger", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("edits_total", sa.Integer(), nullable=False),
        sa.Column("edits_done", sa.Integer(), nullable=False),
        sa.Column("current_loss", sa.Float(), nullable=True),
        sa.Column("experts_created", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        timestamp("created_at", nullable=False),
        timestamp("started_at", nullable=True),
        timestamp("finished_at", nullable=True),
        timestamp("heartbeat_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_training_runs"),
    )
    op.create_index("ix_training_runs_status", "training_runs", ["status"])

    op.create_table(
        "experts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("edit_count", sa.Integer(), nullable=False),
        sa.Column("training_run_id", sa.Integer(), nullable=True),
        sa.Column("final_loss", sa.Float(), nullable=True),
        sa.Column("steps", sa.Integer(), nullable=True),
        sa.Column("key_summary", JSON, nullable=True),
        sa.Column("metrics", JSON, nullable=True),
        timestamp("created_at", nullable=False),
        timestamp("activated_at", nullable=True),
        timestamp("deactivated_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_experts"),
        sa.UniqueConstraint("name", name="uq_experts_name"),
        sa.ForeignKeyConstraint(["training_run_id"], ["training_runs.id"], name="fk_experts_training_run_id_training_runs"),
    )
    op.create_index("ix_experts_status", "experts", ["status"])
    op.create_index("ix_experts_training_run_id", "experts", ["training_run_id"])

    op.create_table(
        "edits",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("rephrases", JSON, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("expert_id", sa.Integer(), nullable=True),
        sa.Column("training_run_id", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        timestamp("created_at", nullable=False),
        timestamp("updated_at", nullable=False),
        timestamp("applied_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_edits"),
        sa.ForeignKeyConstraint(["expert_id"], ["experts.id"], name="fk_edits_expert_id_experts"),
        sa.ForeignKeyConstraint(["training_run_id"], ["training_runs.id"], name="fk_edits_training_run_id_training_runs"),
    )
    op.create_index("ix_edits_status_id", "edits", ["status", "id"])
    op.create_index("ix_edits_subject", "edits", ["subject"])
    op.create_index("ix_edits_expert_id", "edits", ["expert_id"])
    op.create_index("ix_edits_training_run_id", "edits", ["training_run_id"])
    op.create_index("ix_edits_created_at", "edits", ["created_at"])

    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), nullable=False),
        timestamp("at", nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        # Plain integers, not foreign keys: the log never blocks (or is blocked by) other tables.
        sa.Column("edit_id", sa.Integer(), nullable=True),
        sa.Column("expert_id", sa.Integer(), nullable=True),
        sa.Column("training_run_id", sa.Integer(), nullable=True),
        sa.Column("payload", JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_events"),
        sqlite_autoincrement=True,
    )
    for column in ("at", "actor", "action", "edit_id", "expert_id", "training_run_id"):
        op.create_index(f"ix_audit_events_{column}", "audit_events", [column])

    if dialect == "postgresql":
        op.execute(PG_AUDIT_FUNCTION)
        for statement in PG_AUDIT_TRIGGERS:
            op.execute(statement)
    elif dialect == "sqlite":
        for statement in SQLITE_AUDIT_TRIGGERS:
            op.execute(statement)

    stack_state = op.create_table(
        "stack_state",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        timestamp("updated_at", nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_stack_state"),
        sa.CheckConstraint("id = 1", name="ck_stack_state_single_row"),
    )
    now = datetime.now(UTC)
    if dialect == "sqlite":
        now = now.replace(tzinfo=None)  # SQLite keeps naive UTC text (see UTCDateTime)
    op.bulk_insert(stack_state, [{"id": 1, "version": 0, "updated_at": now}])


def downgrade() -> None:
    dialect = op.get_context().dialect.name
    op.drop_table("stack_state")
    if dialect == "postgresql":
        op.execute("DROP TRIGGER audit_events_append_only_truncate ON audit_events")
        op.execute("DROP TRIGGER audit_events_append_only_rows ON audit_events")
        op.execute("DROP FUNCTION audit_events_append_only()")
    elif dialect == "sqlite":
        op.execute("DROP TRIGGER audit_events_append_only_delete")
        op.execute("DROP TRIGGER audit_events_append_only_update")
    op.drop_table("audit_events")  # drops its indexes with it
    op.drop_table("edits")
    op.drop_table("experts")
    op.drop_table("training_runs")
