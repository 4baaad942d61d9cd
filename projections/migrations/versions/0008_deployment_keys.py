"""The deployment's key ids, and rows of older code brought to today's erasure rules.

- ``deployment_keys``: a public id of the hash key and of the key-encryption key
  (``processor.privacy.key_ids``), so a process with other keys stops instead of missing the
  erasures. The KEK's id is taken from the data keys when they agree on one; the hash key's is
  recorded by the first process that checks.
- Dead letters of a reused event id named the first user (``... another user ('kid-x',
  partition P, offset O)``); the reason now says where, not whose (an erasure of that child
  must not leave its id in another child's row, and a replay writes today's reason).
- Dead letters without a ``user_id`` get the one ``processor.applying.decode.readable_ids``
  reads from their body today (a body msgspec refuses is searched for the first
  ``"user_id": "..."``), so an erasure finds them too.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import re
from typing import Final

import msgspec
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_OBJECT: Final = msgspec.json.Decoder(dict[str, object])
_STRING: Final = msgspec.json.Decoder(str)
#: ``processor.applying.decode._string_member`` for ``user_id``.
_USER_ID_MEMBER = re.compile(rb'"user_id"\s*:\s*("(?:[^"\\]|\\.)*")')
#: A user id matches ``[A-Za-z0-9._:@-]`` (docs/contract.md), so it holds no ", partition".
_OLD_REUSED = r"^event_id already applied for another user \(.*, partition (\d+), offset (\d+)\)"
_NEW_REUSED = r"event_id already applied for another user (partition \1, offset \2)"


def _broken_body_user(raw: bytes) -> str | None:
    """The ``user_id`` ``processor.applying.decode.readable_ids`` reads from ``raw`` today: an
    object's own, or, from a body msgspec refuses (cut short, an array, NaN), the first
    ``"user_id": "..."`` in it."""
    try:
        decoded = _OBJECT.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        found = _USER_ID_MEMBER.search(raw)
        if found is None:
            return None
        try:
            user = _STRING.decode(found.group(1))
        except msgspec.DecodeError:
            return None
        return user.replace("\x00", "\\u0000")
    member = decoded.get("user_id")
    return member.replace("\x00", "\\u0000") if isinstance(member, str) else None


def upgrade() -> None:
    op.create_table(
        "deployment_keys",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("key_id", sa.Text, nullable=False),
        sa.CheckConstraint("name IN ('hash_key', 'kek')", name="deployment_keys_name_check"),
    )
    bind = op.get_bind()
    bind.execute(
        sa.text(
            "INSERT INTO deployment_keys (name, key_id) SELECT 'kek', min(kek_id) FROM data_keys "
            "HAVING count(DISTINCT kek_id) = 1"
        )
    )
    bind.execute(
        sa.text(
            "UPDATE dead_letters SET reason = regexp_replace(reason, :old, :new) "
            "WHERE field = 'event_id' AND reason ~ :old"
        ),
        {"old": _OLD_REUSED, "new": _NEW_REUSED},
    )
    rows = bind.execute(sa.text("SELECT id, raw FROM dead_letters WHERE user_id IS NULL"))
    for row_id, raw in rows.fetchall():
        user = _broken_body_user(bytes(raw))
        if user is not None:
            bind.execute(
                sa.text("UPDATE dead_letters SET user_id = :user WHERE id = :id"),
                {"user": user, "id": row_id},
            )


def downgrade() -> None:
    op.drop_table("deployment_keys")
