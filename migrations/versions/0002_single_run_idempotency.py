"""One active training run across all processes; idempotency keys for POST /v1/edits.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30

- `uq_training_runs_one_active`: a unique index on a constant over the runs that are queued or
  running, so the database itself refuses a second active run, whichever replica asks (a
  check-then-insert under a process lock holds only within one process).
- `idempotency_keys`: a client's `Idempotency-Key` on POST /v1/edits, per actor, with the hash
  of the request body and the edit ids it created: a retry with the same key and body gets the
  same edits back instead of new ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
ACTIVE = "status IN ('queued', 'running')"


def upgrade() -> None:
    op.create_index(
        "uq_training_runs_one_active",
        "training_runs",
        [sa.text("(1)")],
        unique=True,
        sqlite_where=sa.text(ACTIVE),
        postgresql_where=sa.text(ACTIVE),
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("request_sha256", sa.String(64), nullable=False),
        sa.Column("edit_ids", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_idempotency_keys"),
        sa.UniqueConstraint("actor", "key", name="uq_idempotency_keys_actor_key"),
    )


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    op.drop_index("uq_training_runs_one_active", table_name="training_runs")
