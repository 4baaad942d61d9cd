"""Per-partition counters of applied and dead-lettered events on the checkpoint row.

They advance in the batch transaction, so totals for stats and metrics are a sum over the
partitions instead of a count over every applied event.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "checkpoints", sa.Column("applied_count", sa.BigInteger, nullable=False, server_default="0")
    )
    op.add_column(
        "checkpoints",
        sa.Column("dead_lettered_count", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.execute(
        """
        UPDATE checkpoints c SET
          applied_count = (SELECT count(*) FROM applied_events a WHERE a.partition = c.partition),
          dead_lettered_count = (SELECT count(*) FROM dead_letters d
                                 WHERE d.partition = c.partition)
        """
    )


def downgrade() -> None:
    op.drop_column("checkpoints", "dead_lettered_count")
    op.drop_column("checkpoints", "applied_count")
