"""Job outcome notification: final jobs whose event is not yet confirmed on the stream.

Jobs already final when this runs count as notified: their events went out before.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 09:27:17.174722
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("notified_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(
            "ix_jobs_unnotified",
            ["updated_at"],
            unique=False,
            postgresql_where=sa.text("notified_at IS NULL"),
            sqlite_where=sa.text("notified_at IS NULL"),
        )
    op.execute(
        "UPDATE jobs SET notified_at = updated_at "
        "WHERE status IN ('completed', 'refunded', 'rejected', 'expired')"
    )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_jobs_unnotified",
            postgresql_where=sa.text("notified_at IS NULL"),
            sqlite_where=sa.text("notified_at IS NULL"),
        )
        batch_op.drop_column("notified_at")
