"""Read-your-writes: the event ids behind each ingest's write token.

- ``write_tokens``: one row per ``POST /v1/events`` answered 202. The answer carries a small
  opaque token naming the row (``processor.api.read_after``); a read with ``after=<token>``
  waits until every event id of the row is applied or dead-lettered. ``user_digests`` holds,
  for each event, the keyed hash of its child's id (the form ``erasures`` keeps), so a wait for
  an event of a child erased before it was applied ends too. Rows expire (``expires_at``,
  ``WRITE_TOKEN_TTL_S``) and the API deletes expired ones (index on ``expires_at``).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "write_tokens",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("event_ids", postgresql.ARRAY(sa.Text), nullable=False),
        sa.Column("user_digests", postgresql.ARRAY(sa.LargeBinary), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("write_tokens_expires_at_idx", "write_tokens", ["expires_at"])


def downgrade() -> None:
    op.drop_table("write_tokens")
