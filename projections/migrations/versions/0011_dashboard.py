"""The dashboard: an index on ``checkpoint_log.committed_at`` for events per second over the last
minutes (``projections.throughput``, ``GET /v1/stats/throughput``); without it each poll scans
the whole audit log, which grows by a row per committed batch.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("checkpoint_log_committed_at_idx", "checkpoint_log", ["committed_at"])


def downgrade() -> None:
    op.drop_index("checkpoint_log_committed_at_idx", table_name="checkpoint_log")
