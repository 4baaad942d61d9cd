"""Erased event ids: the ids an erased child used stay used.

- ``erased_event_ids``: each event id of an erased child's applied events, with the partition
  and offset of that first use (no personal data). Before this table an erasure freed the ids,
  so a replay applied another child's later event with the same id, which live had
  dead-lettered, and ``replay --verify`` differed from live.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "erased_event_ids",
        sa.Column("event_id", sa.Uuid, primary_key=True),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("log_offset", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("erased_event_ids")
