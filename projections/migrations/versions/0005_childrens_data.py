"""Children's data: API tokens, per-child data keys, erasure records, and what erasure finds.

- ``api_tokens``: bearer tokens, stored as a keyed hash only (``processor.access``).
- ``data_keys``: each child's data key, wrapped by the key-encryption key.
- ``erasures``: one row per erased child, keyed by a keyed hash of the id (no personal data),
  with the counts of what the erasure removed.
- ``dead_letters.user_id``: the ``user_id`` of a dead letter's body when it is readable, so an
  erasure finds the child's dead letters; existing rows are filled in here.
- ``applied_events.encrypted``: whether the event's ``data`` was encrypted in the log, so an
  erasure can say how many of the child's events remain readable there.
- an index on ``applied_events.user_id`` (erasure and ``replay --user`` look users up).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _now(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())


def _backfill_dead_letter_users() -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT id, raw FROM dead_letters")).fetchall()
    for row_id, raw in rows:
        try:
            user_id = json.loads(bytes(raw)).get("user_id")
        except (ValueError, AttributeError, RecursionError):
            continue
        if isinstance(user_id, str):
            bind.execute(
                sa.text("UPDATE dead_letters SET user_id = :user WHERE id = :id"),
                {"user": user_id.replace("\x00", ""), "id": row_id},
            )


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("token_id", sa.Text, nullable=False, unique=True),
        sa.Column("secret_hash", sa.LargeBinary, nullable=False),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("scope IN ('ingest', 'read', 'admin')", name="api_tokens_scope_check"),
    )
    op.create_table(
        "data_keys",
        sa.Column("user_id", sa.Text, primary_key=True),
        sa.Column("wrapped_key", sa.LargeBinary, nullable=False),
        sa.Column("kek_id", sa.Text, nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.create_table(
        "erasures",
        sa.Column("user_digest", sa.LargeBinary, primary_key=True),
        sa.Column(
            "erased_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("friendships", sa.Integer, nullable=False),
        sa.Column("topic_rows", sa.Integer, nullable=False),
        sa.Column("applied_events", sa.Integer, nullable=False),
        sa.Column("plain_events", sa.Integer, nullable=False),
        sa.Column("dead_letters", sa.Integer, nullable=False),
        sa.Column("data_key_destroyed", sa.Boolean, nullable=False),
    )
    op.add_column("dead_letters", sa.Column("user_id", sa.Text, nullable=True))
    op.create_index("dead_letters_user_id_idx", "dead_letters", ["user_id"])
    op.add_column(
        "applied_events",
        sa.Column("encrypted", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_index("applied_events_user_id_idx", "applied_events", ["user_id"])
    _backfill_dead_letter_users()


def downgrade() -> None:
    op.drop_index("applied_events_user_id_idx", table_name="applied_events")
    op.drop_column("applied_events", "encrypted")
    op.drop_index("dead_letters_user_id_idx", table_name="dead_letters")
    op.drop_column("dead_letters", "user_id")
    op.drop_table("erasures")
    op.drop_table("data_keys")
    op.drop_table("api_tokens")
