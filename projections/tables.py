"""The stored projections, checkpoints, applied event ids and dead letters (SQLAlchemy Core).

Tables carry no schema name: the live state lives in the connection's default schema and a
replay builds the same tables in a shadow schema (``search_path``). Alembic migrations in
``projections/migrations`` create these tables; this module is their single description.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    false,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY

from projections.names import REPLACED_SUFFIX, REPLAY_SCHEMA_PREFIX, SENTIMENT_COLUMNS

__all__ = ["REPLACED_SUFFIX", "REPLAY_SCHEMA_PREFIX", "SENTIMENT_COLUMNS"]

metadata: Final = MetaData()

checkpoints: Final = Table(
    "checkpoints",
    metadata,
    Column("partition", Integer, primary_key=True, autoincrement=False),
    # Offset of the last event of the partition whose effects are committed; -1 = none yet.
    Column("committed_offset", BigInteger, nullable=False, server_default="-1"),
    Column("owner", Text, nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # Fencing token: raised each time a process takes the partition's lease; a batch commits
    # only under the epoch its owner took (see processor.applying.batch).
    Column("lease_epoch", BigInteger, nullable=False, server_default="0"),
    # Events applied and dead-lettered in this partition, advanced with the checkpoint.
    Column("applied_count", BigInteger, nullable=False, server_default="0"),
    Column("dead_lettered_count", BigInteger, nullable=False, server_default="0"),
    # The fold version (projections.fold.FoldRules) whose results the projection tables hold;
    # a batch of another version is fenced (processor.applying.checkpoint.lock).
    Column("fold_version", Integer, nullable=False, server_default="1"),
)

#: One row per committed live batch: which owner, under which lease epoch, committed which
#: offsets. The audit trail that shows a partition never had two owners commit.
checkpoint_log: Final = Table(
    "checkpoint_log",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("partition", Integer, nullable=False),
    Column("first_offset", BigInteger, nullable=False),
    Column("last_offset", BigInteger, nullable=False),
    Column("owner", Text, nullable=False),
    Column("lease_epoch", BigInteger, nullable=False),
    Column("applied", Integer, nullable=False),
    Column("dead_lettered", Integer, nullable=False),
    Column("committed_at", DateTime(timezone=True), nullable=False),
    Index("checkpoint_log_partition_idx", "partition", "id"),
    # Events per second over the last minutes (projections.throughput).
    Index("checkpoint_log_committed_at_idx", "committed_at"),
)

#: Processor processes that share the partitions, with their last heartbeat (database time).
members: Final = Table(
    "members",
    metadata,
    Column("member_id", Text, primary_key=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("heartbeat_at", DateTime(timezone=True), nullable=False),
)

#: The database sessions of each member (control and lease connections), keyed by what the
#: server knows for sure: backend pid and backend start time (``application_name`` is cut at
#: 63 bytes, shorter than some member ids).
member_backends: Final = Table(
    "member_backends",
    metadata,
    Column("backend_pid", Integer, primary_key=True, autoincrement=False),
    Column("backend_start", DateTime(timezone=True), primary_key=True),
    Column("member_id", Text, nullable=False),
    Index("member_backends_member_idx", "member_id"),
)

friendships: Final = Table(
    "friendships",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("score", SmallInteger, nullable=False),
    Column("events_applied", BigInteger, nullable=False),
    Column("last_event_at", DateTime(timezone=True), nullable=True),
)

topic_metrics: Final = Table(
    "topic_metrics",
    metadata,
    Column("user_id", Text, nullable=False),
    Column("topic", Text, nullable=False),
    Column("conversations", BigInteger, nullable=False),
    Column("turns", BigInteger, nullable=False),
    Column("duration_s", Double, nullable=False),
    *(Column(name, BigInteger, nullable=False) for name in SENTIMENT_COLUMNS),
    Column("last_discussed_at", DateTime(timezone=True), nullable=True),
    PrimaryKeyConstraint("user_id", "topic"),
)

applied_events: Final = Table(
    "applied_events",
    metadata,
    Column("event_id", Uuid, primary_key=True),
    Column("partition", Integer, nullable=False),
    Column("log_offset", BigInteger, nullable=False),
    Column("user_id", Text, nullable=False),
    Column("type", Text, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    # Whether the event's data was encrypted in the log (an erasure reports the plain ones).
    Column("encrypted", Boolean, nullable=False, server_default=false()),
    Index("applied_events_user_id_idx", "user_id"),
)

dead_letters: Final = Table(
    "dead_letters",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("partition", Integer, nullable=False),
    Column("log_offset", BigInteger, nullable=False),
    # The event_id when the body had a readable one, so GET /v1/events/{id} can find it.
    Column("event_id", Text, nullable=True),
    Column("field", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("raw", LargeBinary, nullable=False),
    Column("dead_lettered_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # The body's user_id when readable, so an erasure finds the child's dead letters.
    Column("user_id", Text, nullable=True),
    # The routing key of an event published under another key than its user_id: the key may be
    # another child's id, so that child's erasure finds the row and takes the key out of it.
    Column("routing_key", Text, nullable=True),
    UniqueConstraint("partition", "log_offset", name="dead_letters_partition_offset_key"),
    Index("dead_letters_event_id_idx", "event_id"),
    Index("dead_letters_user_id_idx", "user_id"),
    # An erasure finds the misrouted letters naming the child while every partition waits.
    Index(
        "dead_letters_routing_key_idx",
        "routing_key",
        postgresql_where=text("routing_key IS NOT NULL"),
    ),
)

#: API bearer tokens: only a keyed hash of the secret part is kept (``processor.access``).
api_tokens: Final = Table(
    "api_tokens",
    metadata,
    Column("name", Text, primary_key=True),
    Column("token_id", Text, nullable=False, unique=True),
    Column("secret_hash", LargeBinary, nullable=False),
    Column("scope", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    CheckConstraint("scope IN ('ingest', 'read', 'admin')", name="api_tokens_scope_check"),
)

#: Each child's data key, wrapped by the key-encryption key (``processor.privacy``).
data_keys: Final = Table(
    "data_keys",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("wrapped_key", LargeBinary, nullable=False),
    Column("kek_id", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

#: One row per erased child, keyed by a keyed hash of its id: no personal data.
erasures: Final = Table(
    "erasures",
    metadata,
    Column("user_digest", LargeBinary, primary_key=True),
    Column("erased_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("friendships", Integer, nullable=False),
    Column("topic_rows", Integer, nullable=False),
    Column("applied_events", Integer, nullable=False),
    Column("plain_events", Integer, nullable=False),
    Column("dead_letters", Integer, nullable=False),
    Column("data_key_destroyed", Boolean, nullable=False),
)

#: The event ids an erased child had used (event ids are not personal data: docs/contract.md
#: §5.3), with where that first use was. An id stays used after the erasure: a later event of
#: another child with it stays a dead letter, in live processing and in a replay alike.
erased_event_ids: Final = Table(
    "erased_event_ids",
    metadata,
    Column("event_id", Uuid, primary_key=True),
    Column("partition", Integer, nullable=False),
    Column("log_offset", BigInteger, nullable=False),
)

#: A public id of each of the deployment's keys (``processor.privacy.key_ids``): a process
#: with another hash key or key-encryption key stops instead of missing erasures or
#: dead-lettering every encrypted event.
deployment_keys: Final = Table(
    "deployment_keys",
    metadata,
    Column("name", Text, primary_key=True),
    Column("key_id", Text, nullable=False),
    CheckConstraint("name IN ('hash_key', 'kek')", name="deployment_keys_name_check"),
)

#: Each build of a new fold version (processor.versions): its state and progress.
projection_builds: Final = Table(
    "projection_builds",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("fold_version", Integer, nullable=False),
    Column("state", Text, nullable=False),
    Column("member", Text, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("records_done", BigInteger, nullable=False, server_default="0"),
    Column("records_total", BigInteger, nullable=False, server_default="0"),
    Column("message", Text, nullable=False, server_default=""),
    CheckConstraint(
        "state IN ('building', 'checking', 'swapping', 'live', 'failed')",
        name="projection_builds_state_check",
    ),
)

#: The event ids behind each ingest's write token (read-your-writes, ``processor.api.waiting``):
#: a read with ``after=<token>`` waits for them. ``user_digests`` gives each event's child as
#: the keyed hash ``erasures`` keeps (no personal data), so a wait for an event of a child
#: erased before it was applied ends. Rows expire; the API deletes expired ones.
write_tokens: Final = Table(
    "write_tokens",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("event_ids", ARRAY(Text), nullable=False),
    Column("user_digests", ARRAY(LargeBinary), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Index("write_tokens_expires_at_idx", "expires_at"),
)

#: Tables of the deployment as a whole, not of one build of the projections: a replay's shadow
#: schema does not copy them, and its connections find them in the live schema.
GLOBAL_TABLES: Final = frozenset(
    {
        "api_tokens",
        "data_keys",
        "deployment_keys",
        "projection_builds",
        "erasures",
        "erased_event_ids",
        "members",
        "member_backends",
        "checkpoint_log",
        "write_tokens",
    }
)
