"""Initial tables: checkpoints, friendships, topic metrics, applied event ids, dead letters.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SENTIMENTS = ("happy", "curious", "surprised", "neutral", "sad", "fearful", "angry", "disgusted")


def upgrade() -> None:
    op.create_table(
        "checkpoints",
        sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("committed_offset", sa.BigInteger, nullable=False, server_default="-1"),
        sa.Column("owner", sa.Text, nullable=True),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.create_table(
        "friendships",
        sa.Column("user_id", sa.Text, primary_key=True),
        sa.Column("score", sa.SmallInteger, nullable=False),
        sa.Column("events_applied", sa.BigInteger, nullable=False),
        sa.Column("last_event_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "topic_metrics",
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("conversations", sa.BigInteger, nullable=False),
        sa.Column("turns", sa.BigInteger, nullable=False),
        sa.Column("duration_s", sa.Double, nullable=False),
        *(sa.Column(f"sentiment_{label}", sa.BigInteger, nullable=False) for label in SENTIMENTS),
        sa.Column("last_discussed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("user_id", "topic"),
    )
    op.create_table(
        "applied_events",
        sa.Column("event_id", sa.Uuid, primary_key=True),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("log_offset", sa.BigInteger, nullable=False),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("log_offset", sa.BigInteger, nullable=False),
        sa.Column("event_id", sa.Text, nullable=True),
        sa.Column("field", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("raw", sa.LargeBinary, nullable=False),
        sa.Column(
            "dead_lettered_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
        sa.UniqueConstraint("partition", "log_offset", name="dead_letters_partition_offset_key"),
    )
    op.create_index("dead_letters_event_id_idx", "dead_letters", ["event_id"])


def downgrade() -> None:
    op.drop_table("dead_letters")
    op.drop_table("applied_events")
    op.drop_table("topic_metrics")
    op.drop_table("friendships")
    op.drop_table("checkpoints")
