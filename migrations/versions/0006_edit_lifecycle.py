"""Cancel and retract single edits: `experts.stack_order` and `experts.replaced_by_id`.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30

- Edit statuses `cancelled`, `retracting` and `retracted` need no change: statuses are stored as
  plain strings (no native enum, no check constraint).
- `experts.stack_order`: an expert's place in the live stack (the later wins among near-equal
  anchors, i.e. superseding). A trained expert takes its own id; an expert retrained without a
  retracted edit takes the place of the one it replaces. Existing experts are backfilled with
  their id, the order they had.
- `experts.replaced_by_id`: the expert that replaced this one (null otherwise). A plain integer,
  as the audit log's ids are: adding a foreign key to `experts` would rebuild the table on
  SQLite, which `edits` references.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("stack_order", "replaced_by_id")


def upgrade() -> None:
    for column in COLUMNS:
        op.add_column("experts", sa.Column(column, sa.Integer(), nullable=True))
    op.execute("UPDATE experts SET stack_order = id")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite" and sqlite3.sqlite_version_info < (3, 35):
        # Batch mode: an SQLite this old rebuilds the table, it cannot drop a column in place.
        with op.batch_alter_table("experts") as batch:
            for column in COLUMNS:
                batch.drop_column(column)
    else:
        for column in COLUMNS:
            op.drop_column("experts", column)
