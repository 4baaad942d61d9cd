"""Which member each processor database session belongs to, keyed by what PostgreSQL knows.

Lease holders and members were recognised by ``application_name``, which PostgreSQL cuts at
63 bytes: a member id (``host:pid``) longer than about 38 characters never matched, so its
leases looked lost and it handed its partitions off in a loop, and fencing found none of its
sessions. A session is now identified by its backend pid and backend start time (together
unique for the server's life).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "member_backends",
        sa.Column("backend_pid", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("backend_start", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("member_id", sa.Text, nullable=False),
    )
    op.create_index("member_backends_member_idx", "member_backends", ["member_id"])


def downgrade() -> None:
    op.drop_index("member_backends_member_idx", table_name="member_backends")
    op.drop_table("member_backends")
