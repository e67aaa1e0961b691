"""Where an edit's subject came from: `edits.subject_source`.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

- `edits.subject_source`: `client` (sent with the edit) or `inferred` (the edit named none; the
  training worker had the base model pick one among the prompt's spans); null while an edit has
  no subject. Edits stored before this revision that have a subject got it from their client:
  they are backfilled `client`.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("edits", sa.Column("subject_source", sa.String(16), nullable=True))
    op.execute("UPDATE edits SET subject_source = 'client' WHERE subject IS NOT NULL")


def downgrade() -> None:
    # Batch mode: SQLite rebuilds the table where it cannot drop a column in place.
    with op.batch_alter_table("edits") as batch:
        batch.drop_column("subject_source")
