"""Publishing a JSON Lines file of events (the ``publish`` command)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

import msgspec

from processor.privacy.data_keys import seal_events
from processor.privacy.errors import UserErased
from processor.privacy.keys import load_keys
from processor.publishing.errors import FileUnreadable, PublishingError
from processor.publishing.publisher import OutgoingEvent, publish_events
from processor.settings import Settings
from projections.database import connect
from schemas.validation import EventValidationError, decode_event

log = logging.getLogger(__name__)

#: Invalid lines named one by one in an error or a report; the rest are counted.
MAX_REPORTED_LINES: Final = 20


@dataclass(frozen=True)
class InvalidLine:
    """One line of the input file that is not a valid event.

    Attributes:
        number: the line number (1-based).
        reason: why (the field and the rule it breaks).
    """

    number: int
    reason: str


@dataclass(frozen=True)
class FileEvents:
    """What a JSON Lines file holds: the events to publish, in file order, and its bad lines.

    With ``allow_invalid``, ``events`` also holds the invalid lines as they are (the processor
    dead-letters them); ``invalid`` lists them either way.
    """

    events: list[OutgoingEvent]
    invalid: list[InvalidLine]
    #: The line number of each of ``events``, and whether it is a valid event.
    lines: list[int] = field(default_factory=list)
    valid: list[bool] = field(default_factory=list)


def describe_invalid(path: Path, invalid: list[InvalidLine]) -> str:
    """The invalid lines, one per line, at most ``MAX_REPORTED_LINES`` of them, then a count."""
    shown = [f"  {path}:{line.number}: {line.reason}" for line in invalid[:MAX_REPORTED_LINES]]
    if len(invalid) > MAX_REPORTED_LINES:
        shown.append(f"  ... and {len(invalid) - MAX_REPORTED_LINES} more invalid lines")
    return "\n".join(shown)


class ErasedInFile(PublishingError):
    """Lines of the file are events of erased children; nothing of the file was published."""

    def __init__(self, path: Path, numbers: list[int]) -> None:
        shown = ", ".join(str(n) for n in numbers[:MAX_REPORTED_LINES])
        more = (
            f" and {len(numbers) - MAX_REPORTED_LINES} more"
            if len(numbers) > MAX_REPORTED_LINES
            else ""
        )
        super().__init__(
            f"{path}: lines {shown}{more} are events of erased children; nothing published "
            "(an erased child's events are never accepted again)"
        )
        self.numbers = numbers


class InvalidFile(PublishingError):
    """Lines of the input file are not valid events; nothing of the file was published.

    Attributes:
        path: the file.
        invalid: every invalid line (the message names the first ``MAX_REPORTED_LINES``).
    """

    def __init__(self, path: Path, invalid: list[InvalidLine]) -> None:
        super().__init__(
            f"{path}: {len(invalid)} invalid lines, nothing published (--allow-invalid publishes "
            f"them too, and the processor dead-letters them):\n{describe_invalid(path, invalid)}"
        )
        self.path = path
        self.invalid = invalid


def check_readable(path: Path) -> None:
    """Fail early, before any connection, when ``path`` is not a readable file.

    Raises:
        FileUnreadable: there is no such file, it is a directory, or it cannot be read.
    """
    if not path.exists():
        raise FileUnreadable(f"no such file: {path}")
    if path.is_dir():
        raise FileUnreadable(f"{path} is a directory, not a JSON Lines file")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise FileUnreadable(f"cannot read {path}: {exc.strerror or exc}") from exc


def read_events(path: Path, *, allow_invalid: bool = False) -> FileEvents:
    """Read events from a JSON Lines file (one event object per line, blank lines skipped).

    Args:
        path: the file.
        allow_invalid: publish lines that are not valid events as they are (the processor
            dead-letters them) instead of refusing the file.

    Raises:
        InvalidFile: lines are not valid events and ``allow_invalid`` is false (names each,
            up to ``MAX_REPORTED_LINES``, with its line number, field and reason).
        OSError: the file cannot be read.
    """
    contents = FileEvents([], [])
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            body = line.strip()
            if not body:
                continue
            contents.lines.append(number)
            try:
                event = decode_event(body)
            except EventValidationError as error:
                reasons = "; ".join(f"{name or '<body>'}: {why}" for name, why in error.problems)
                contents.invalid.append(InvalidLine(number, reasons))
                routing = _routing_key_of_invalid(body, number)
                contents.events.append(OutgoingEvent(routing[0], routing[1], body))
                contents.valid.append(False)
                continue
            contents.events.append(OutgoingEvent(event.event_id, event.user_id, body))
            contents.valid.append(True)
    if contents.invalid and not allow_invalid:
        raise InvalidFile(path, contents.invalid)
    return contents


def seal_file_events(settings: Settings, path: Path, contents: FileEvents) -> FileEvents:
    """``contents`` with the ``data`` of every valid event encrypted with its child's data key
    (``processor.privacy.data_keys``); invalid lines stay as they are.

    Raises:
        ErasedInFile: events of erased children are in the file; nothing is published.
        KeyMissing: the keys are not configured.
    """
    keys = load_keys(settings)
    chosen = [i for i, valid in enumerate(contents.valid) if valid]
    with connect(settings.database_url) as conn:
        try:
            sealed = seal_events(conn, [contents.events[i].body for i in chosen], keys)
        except UserErased as exc:
            numbers = [contents.lines[chosen[i]] for i in exc.indexes]
            raise ErasedInFile(path, numbers) from exc
    events = list(contents.events)
    for i, body in zip(chosen, sealed, strict=True):
        events[i] = replace(events[i], body=body)
    return replace(contents, events=events)


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
    """Publish every event of ``path`` with confirms, ``tuning.PUBLISH_CHUNK`` at a time.

    Returns the number of events published.

    Unconfirmed events are published again on the next broker node (bounded attempts with
    back-off, ``publish_events_of``): the processor applies a re-published event once.

    Raises:
        InvalidFile: lines are invalid and ``allow_invalid`` is false (checked before publishing).
        PublishError: a chunk still failed after the retries.
    """
    return await publish_events_of(settings, read_events(path, allow_invalid=allow_invalid))


async def publish_events_of(
    settings: Settings,
    contents: FileEvents,
    on_confirmed: Callable[[int], None] | None = None,
) -> int:
    """Publish ``contents.events`` with confirms, failing over between broker nodes
    (``processor.publishing.publisher.publish_events``); returns the count.

    Args:
        settings: the broker.
        contents: the events, in file order.
        on_confirmed: called after each chunk the broker confirmed, with the number of events
            confirmed so far (``just publish`` moves its progress bar with it).

    Raises:
        PublishError: a chunk still had unconfirmed events after ``tuning.PUBLISH_ATTEMPTS``
            attempts.
    """
    return await publish_events(settings, contents.events, on_confirmed)
