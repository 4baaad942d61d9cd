"""Publishing a JSON Lines file of events (the ``publish`` command)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import msgspec
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from processor.errors import PublishError
from processor.publisher import AsyncPublisher, OutgoingEvent
from processor.settings import Settings
from schemas.validation import EventValidationError, decode_event

log = logging.getLogger(__name__)

#: Events published per confirm round.
CHUNK: Final = 5000


class InvalidLine(ValueError):
    """A line of the input file is not a valid event; nothing of the file was published."""


def read_events(path: Path, *, allow_invalid: bool = False) -> Iterator[OutgoingEvent]:
    """Read events from a JSON Lines file (one event object per line, blank lines skipped).

    Args:
        path: the file.
        allow_invalid: publish lines that are not valid events as they are (the processor
            dead-letters them) instead of refusing the file.

    Raises:
        InvalidLine: a line is not a valid event (names the line number, field and reason).
    """
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            body = line.strip()
            if not body:
                continue
            try:
                event = decode_event(body)
            except EventValidationError as error:
                if not allow_invalid:
                    raise InvalidLine(f"{path}:{number}: {error}") from error
                routing = _routing_key_of_invalid(body, number)
                yield OutgoingEvent(routing[0], routing[1], body)
                continue
            yield OutgoingEvent(event.event_id, event.user_id, body)


def _routing_key_of_invalid(body: bytes, number: int) -> tuple[str, str]:
    try:
        raw = msgspec.json.decode(body)
    except msgspec.DecodeError:
        raw = None
    if isinstance(raw, dict):
        user = raw.get("user_id")
        event_id = raw.get("event_id")
        if isinstance(user, str) and user:
            return (event_id if isinstance(event_id, str) else f"line-{number}", user[:255])
    return (f"line-{number}", f"invalid-line-{number}")


async def publish_file(settings: Settings, path: Path, *, allow_invalid: bool = False) -> int:
    """Publish every event of ``path`` with confirms, ``CHUNK`` at a time; returns the count.

    A chunk that fails is published again (bounded retries with jitter): the processor applies
    a re-published event once.

    Raises:
        InvalidLine: a line is invalid and ``allow_invalid`` is false (checked before publishing).
        PublishError: a chunk still failed after the retries.
    """
    events = list(read_events(path, allow_invalid=allow_invalid))
    publisher = AsyncPublisher(settings)
    published = 0
    try:
        for start in range(0, len(events), CHUNK):
            chunk = events[start : start + CHUNK]
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(PublishError),
                stop=stop_after_attempt(5),
                wait=wait_random_exponential(multiplier=0.2, max=5),
                reraise=True,
            ):
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        log.warning("re-publishing a chunk of %d events", len(chunk))
                        await publisher.close()
                    published += await publisher.publish(chunk)
    finally:
        await publisher.close()
    return published


def publish_file_sync(settings: Settings, path: Path, *, allow_invalid: bool = False) -> int:
    """``publish_file`` for synchronous callers."""
    return asyncio.run(publish_file(settings, path, allow_invalid=allow_invalid))
