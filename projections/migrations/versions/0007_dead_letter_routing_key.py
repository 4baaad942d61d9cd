"""The routing key of a misrouted event's dead letter, so an erasure finds it.

- ``dead_letters.routing_key``: the routing key of an event published under another key than
  its ``user_id``. The key may be another child's id, quoted in the row's reason; the erasure
  of that child finds the row by it and takes the key out of the reason. Existing rows get it
  from their reason (``routing key '...' is not the user_id``), where it was not cut short.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import ast
import re

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: The reason ``processor.applying.decode.misrouted_reason`` wrote (a Python repr of the key,
#: cut to 128 characters and "..." when longer).
_QUOTED_CHARS = 128
_QUOTED_KEY = re.compile(r"^routing key ('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\") is not the ")


def _backfill() -> None:
    bind = op.get_bind()
    rows = bind.execute(
        sa.text("SELECT id, reason FROM dead_letters WHERE field = 'user_id'")
    ).fetchall()
    for row_id, reason in rows:
        found = _QUOTED_KEY.match(str(reason))
        if found is None:
            continue
        key = ast.literal_eval(found.group(1))
        cut = len(key) == _QUOTED_CHARS + len("...") and key.endswith("...")
        if isinstance(key, str) and not cut:
            bind.execute(
                sa.text("UPDATE dead_letters SET routing_key = :key WHERE id = :id"),
                {"key": key, "id": row_id},
            )


def upgrade() -> None:
    op.add_column("dead_letters", sa.Column("routing_key", sa.Text, nullable=True))
    _backfill()


def downgrade() -> None:
    op.drop_column("dead_letters", "routing_key")
