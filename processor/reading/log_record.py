"""``LogRecord``: one entry of a partition's log, as the read path hands it to the appliers."""

from __future__ import annotations

import msgspec


class LogRecord(msgspec.Struct, frozen=True, gc=False):
    """One message of a partition stream: its offset (0-based, per stream) and raw body bytes.

    A frozen msgspec Struct, not a dataclass: the reader makes one per message, and a Struct
    is built in C (a tenth of a frozen dataclass's ``__init__``); its fields hold no
    containers, so the garbage collector need not track it (``gc=False``).

    Attributes:
        offset: the record's (first) offset.
        body: the message body, or the raw entry when ``error`` is set.
        error: set when the stream entry could not be read as a message; it is then
            dead-lettered with that reason.
        routing_key: the routing key it was published with (AMQP), None for an entry written
            straight to the stream; an event whose routing key is not its ``user_id`` is
            dead-lettered (docs/contract.md, "Routing").
        records: how many offsets the record covers: 1, or more for an unreadable sub-entry
            batch (one dead letter for all of them).
    """

    offset: int
    body: bytes
    error: str | None = None
    routing_key: str | None = None
    records: int = 1

    @property
    def last_offset(self) -> int:
        """The last offset the record covers."""
        return self.offset + self.records - 1
