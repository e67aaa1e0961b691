"""The check before an expert goes live, and training progress in steps.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04

- `experts.live_check`: JSON, the figures of the check the trainer runs on a new expert before it
  goes live (its own edits, a locality sample, the nearest live edits); null for experts made
  before it, or with the check off.
- `training_runs.steps_done` (0 for runs stored before) and `training_runs.steps_planned`
  (null until the run has planned its batches): the run's progress in training steps.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.add_column("experts", sa.Column("live_check", JSON, nullable=True))
    op.add_column("training_runs", sa.Column("steps_done", sa.Integer(), nullable=False, server_default=sa.text("0")))
    op.add_column("training_runs", sa.Column("steps_planned", sa.Integer(), nullable=True))


def downgrade() -> None:
    columns = (("training_runs", "steps_planned"), ("training_runs", "steps_done"), ("experts", "live_check"))
    if op.get_bind().dialect.name == "sqlite" and sqlite3.sqlite_version_info < (3, 35):
        # Batch mode: an SQLite this old rebuilds the table, it cannot drop a column in place
        # (the rebuild loses training_runs' one-active-run index, which it cannot reflect).
        for table, column in columns:
            with op.batch_alter_table(table) as batch:
                batch.drop_column(column)
    else:
        for table, column in columns:
            op.drop_column(table, column)
