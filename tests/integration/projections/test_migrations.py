"""Migrations over rows that older code wrote, on the real database."""

from __future__ import annotations

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

from processor.applying.decode import misrouted_reason
from processor.settings import Settings
from projections.database import (
    HEAD_REVISION,
    alembic_config,
    at_head,
    connect,
    database_name,
    migrate,
    sqlalchemy_url,
)


def _downgrade(url: str, revision: str) -> None:
    engine = create_engine(sqlalchemy_url(url))
    try:
        with engine.begin() as conn:
            config = alembic_config()
            config.attributes["connection"] = conn
            command.downgrade(config, revision)
    finally:
        engine.dispose()


def test_misrouted_dead_letters_of_older_code_get_their_routing_key(settings: Settings) -> None:
    """0007 reads the key back from the reason (an erasure then finds the row); a key the
    reason cut short, and other reasons, are left without one."""
    _downgrade(settings.database_url, "0006")
    long_key = "k" * 200
    reasons = {
        0: misrouted_reason('kid-o\'brien "x"', "kid-a"),
        1: misrouted_reason(long_key, "kid-a"),
        2: "missing field `user_id`",
    }
    with connect(settings.database_url) as conn:
        for offset, reason in reasons.items():
            conn.execute(
                "INSERT INTO dead_letters (partition, log_offset, field, reason, raw, user_id) "
                "VALUES (0, %s, 'user_id', %s, '\\x7b7d', 'kid-a')",
                (offset, reason),
            )
    migrate(settings.database_url)
    with connect(settings.database_url) as conn:
        keys = dict(conn.execute("SELECT log_offset, routing_key FROM dead_letters").fetchall())
    assert keys == {0: 'kid-o\'brien "x"', 1: None, 2: None}


def test_older_rows_follow_todays_erasure_rules_after_0008(settings: Settings) -> None:
    """A reused id's reason no longer names the first child; a broken body's dead letter gets
    its user_id; the data keys' one KEK id is recorded."""
    _downgrade(settings.database_url, "0007")
    old_reason = "event_id already applied for another user ('kid-x', partition 3, offset 4)"
    with connect(settings.database_url) as conn:
        conn.execute(
            "INSERT INTO dead_letters (partition, log_offset, field, reason, raw, user_id) VALUES "
            "(3, 9, 'event_id', %s, '\\x7b7d', 'kid-b'), (3, 10, '', 'not valid JSON', %s, NULL)",
            (old_reason + "; not applied", b'{"user_id": "kid-c", "data": {'),
        )
        conn.execute(
            "INSERT INTO data_keys (user_id, wrapped_key, kek_id) VALUES ('kid-b', 'x', 'k1')"
        )
    migrate(settings.database_url)
    with connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT log_offset, reason, user_id FROM dead_letters ORDER BY log_offset"
        ).fetchall()
        recorded = conn.execute("SELECT name, key_id FROM deployment_keys").fetchall()
    assert rows == [
        (
            9,
            "event_id already applied for another user (partition 3, offset 4); not applied",
            "kid-b",
        ),
        (10, "not valid JSON", "kid-c"),
    ]
    assert recorded == [("kek", "k1")]


def test_the_head_revision_is_alembics_newest_migration() -> None:
    """``migrate`` skips Alembic for a database at ``HEAD_REVISION``: a new migration must
    move it, or processes would start on a database without it."""
    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == HEAD_REVISION


def test_only_a_database_at_the_newest_migration_skips_alembic(settings: Settings) -> None:
    """A database at an older revision is still upgraded; a missing one is not at head."""
    url = settings.database_url
    assert at_head(url)
    _downgrade(url, "0010")
    assert not at_head(url)
    migrate(url)
    assert at_head(url)
    with connect(url) as conn:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert row == (HEAD_REVISION,)
    missing = url.replace(database_name(url), database_name(url) + "_missing")
    assert not at_head(missing)
