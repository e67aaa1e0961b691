"""Drop `experts.key_summary`: nothing wrote it (always null) and nothing read it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03

- `experts.key_summary`: a JSON column created in 0001 for a summary of an expert's keys; the
  keys live in the expert's files (and their summary in `experts.metrics`), so it stayed null.
  A downgrade adds it back, empty.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite" and sqlite3.sqlite_version_info < (3, 35):
        # Batch mode: an SQLite this old rebuilds the table, it cannot drop a column in place.
        with op.batch_alter_table("experts") as batch:
            batch.drop_column("key_summary")
    else:
        op.drop_column("experts", "key_summary")


def downgrade() -> None:
    op.add_column("experts", sa.Column("key_summary", JSON, nullable=True))
