"""Fold versions: the live tables record the scoring rule that built them.

- ``checkpoints.fold_version``: the version of the fold (``projections.fold.FoldRules``) whose
  results the projection tables hold. Every batch checks it under the row lock, so a writer of
  another version is fenced once a rebuild with a new version is swapped in. Existing rows were
  built by version 1.
- ``projection_builds``: each build of a new fold version (``processor.versions``) with its
  state and progress, for ``just status`` and ``GET /v1/stats``.
- a partial index on ``dead_letters.routing_key``: an erasure looks the child's id up there
  while every partition waits for it.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "dead_letters_routing_key_idx",
        "dead_letters",
        ["routing_key"],
        postgresql_where=sa.text("routing_key IS NOT NULL"),
    )
    op.add_column(
        "checkpoints", sa.Column("fold_version", sa.Integer, nullable=False, server_default="1")
    )
    op.create_table(
        "projection_builds",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("fold_version", sa.Integer, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("member", sa.Text, nullable=False),
        sa.Column(
            "started_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("records_done", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("records_total", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("message", sa.Text, nullable=False, server_default=""),
        sa.CheckConstraint(
            "state IN ('building', 'checking', 'swapping', 'live', 'failed')",
            name="projection_builds_state_check",
        ),
    )


def downgrade() -> None:
    op.drop_index("dead_letters_routing_key_idx", table_name="dead_letters")
    op.drop_table("projection_builds")
    op.drop_column("checkpoints", "fold_version")
