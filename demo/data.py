"""The bundled Topical-Chat conversations (``data/topical-chat/``) as contract events, for the demo.

A pure converter: it reads the dataset's JSON files and yields event bodies (docs/contract.md
sections 1
and 2); it talks to no broker and no database. ``python -m demo.data OUT.jsonl`` writes
the bodies one per line and prints how many. The mapping below is also returned, as text, by
``mapping_description()`` so that the demo can print it.

MAPPING
Topical-Chat -> contract events (docs/contract.md sections 1 and 2)

Input: <data_dir>/conversations/{valid_freq,valid_rare,test_freq}.json, the reading sets of the
same names in <data_dir>/reading_sets/, and <data_dir>/entity_to_topic.json.

- Order: the conversations of valid_freq, then valid_rare, then test_freq, each file in its JSON
  key order; k = 0, 1, 2, ... numbers them in that order. A conversation's events are
  consecutive: its turns in dataset order, then its completion. The demo publishes in exactly
  this order, so it is each child's log order.
- Child: every conversation belongs to one child, user_id = "child-%03d" % n where n = (the first
  8 bytes, big-endian, of SHA-256 of the conversation id in UTF-8) mod children (200 by default).
- Roles: agent_2 plays the child and agent_1 the robot, in every conversation. (agent_1 speaks
  first in all 1,617 bundled conversations, so this is also "the first speaker is the robot".)
- Topic: the "entity" of every fact section (FS1, FS2, FS3, ...) in the reading sets of both
  agents, mapped through entity_to_topic.json; the topic is the most frequent one, a tie goes to
  the alphabetically smallest name, entities missing from entity_to_topic.json are ignored, and a
  conversation with no mapped entity gets the topic "general". All of a conversation's events
  carry its topic.
- Turn i (0-based) -> conversation.turn_recorded: speaker "child" (agent_2) or "robot" (agent_1);
  sentiment Happy -> happy, Curious to dive deeper -> curious, Surprised -> surprised,
  Neutral -> neutral, Sad -> sad, Fearful -> fearful, Angry -> angry, Disgusted -> disgusted.
  Any other label, the empty one included, raises DemoDataError: nothing is dropped silently.
- After the turns -> conversation.completed: turns = number of turns; duration_s = 15.0 * turns
  (synthetic, 15 s per turn: the dataset has no times); rating = the CHILD's (agent_2's)
  conversation_rating, Excellent -> excellent, Good -> good, Passable -> passable,
  Not Good -> not_good, Poor -> poor. An EMPTY rating is passed through ON PURPOSE as
  "rating": "", an invalid value: the processor dead-letters that event with the reason (field
  data.rating), so the demo shows dead letters on real dirty data. Any other rating label raises
  DemoDataError. (In the bundled files only agent_1 ever has an empty rating, so with agent_2 as
  the child no bundled event is invalid.)
- Times (synthetic and deterministic; the dataset has none): conversation k starts at
  2024-01-01T00:00:00Z + k * 20 min; turn i occurs at start + 15 s * i; the completion at
  start + 15 s * turns, one slot after the last turn. occurred_at is RFC 3339 in UTC with "Z".
- event_id: UUID version 5 in the fixed namespace DEMO_NAMESPACE of "<conversation id>/<turn
  index>" for turn i and "<conversation id>/completed" for the completion, so a re-run of the
  demo republishes the same ids and the processor applies each event once.
- Not used: message, knowledge_source, turn_rating, config, article_url, agent_1's rating.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, Literal, TypeVar

import msgspec

from demo.errors import DemoDataError
from schemas.events import TOPIC_PATTERN, Rating, Sentiment

#: The dataset splits, in conversion order; each is ``conversations/<split>.json`` and
#: ``reading_sets/<split>.json`` under the data directory.
SPLITS: Final[tuple[str, ...]] = ("valid_freq", "valid_rare", "test_freq")
#: Where the bundled copy lives in a checkout of this repository.
DEFAULT_DATA_DIR: Final = Path(__file__).resolve().parent.parent / "data" / "topical-chat"
#: Default number of children the conversations are spread over.
DEFAULT_CHILDREN: Final = 200
#: Namespace of the version-5 event ids: uuid5(NAMESPACE_URL, "https://github.com/alexa/Topical-Chat").
DEMO_NAMESPACE: Final = uuid.UUID("70451b79-2e01-5c98-ae44-9fb67f434983")
#: Start of conversation 0.
EPOCH: Final = datetime(2024, 1, 1, tzinfo=UTC)
#: Gap between the starts of consecutive conversations.
CONVERSATION_SPACING: Final = timedelta(minutes=20)
#: Synthetic length of one turn, in seconds (time between turns and per-turn duration).
SECONDS_PER_TURN: Final = 15.0
#: Topic of a conversation whose entities map to no topic.
FALLBACK_TOPIC: Final = "general"
#: The agent that plays the child; the other one plays the robot.
CHILD_AGENT: Final = "agent_2"
ROBOT_AGENT: Final = "agent_1"

#: Dataset turn ``sentiment`` label -> contract sentiment.
SENTIMENT_MAP: Final[Mapping[str, Sentiment]] = {
    "Happy": "happy",
    "Curious to dive deeper": "curious",
    "Surprised": "surprised",
    "Neutral": "neutral",
    "Sad": "sad",
    "Fearful": "fearful",
    "Angry": "angry",
    "Disgusted": "disgusted",
}
#: Dataset ``conversation_rating`` label -> contract rating (``""`` is passed through, see above).
RATING_MAP: Final[Mapping[str, Rating]] = {
    "Excellent": "excellent",
    "Good": "good",
    "Passable": "passable",
    "Not Good": "not_good",
    "Poor": "poor",
}

_TOPIC_RE: Final = re.compile(TOPIC_PATTERN)
_T = TypeVar("_T")
_MAPPING_MARKER: Final = "MAPPING\n"


@dataclass(frozen=True, slots=True)
class DemoEvent:
    """One event to publish.

    Attributes:
        event_id: the event's UUID (canonical form), also the AMQP ``message_id``.
        user_id: the child, ``child-NNN``; the routing key.
        body: the JSON envelope of docs/contract.md section 1, UTF-8, one line (no newline).
    """

    event_id: str
    user_id: str
    body: bytes


class _Turn(msgspec.Struct, frozen=True):
    agent: str
    sentiment: str


class _Conversation(msgspec.Struct, frozen=True):
    content: list[_Turn]
    conversation_rating: dict[str, str]


class _FactSection(msgspec.Struct, frozen=True):
    entity: str


class _ReadingSet(msgspec.Struct, frozen=True):
    agent_1: dict[str, _FactSection]
    agent_2: dict[str, _FactSection]


def mapping_description() -> str:
    """The dataset-to-events mapping as plain text (the ``MAPPING`` part of this module's doc)."""
    doc = __doc__
    if doc is None or _MAPPING_MARKER not in doc:
        return "mapping description unavailable (docstrings stripped); see demo/data.py"
    return doc.split(_MAPPING_MARKER, 1)[1].strip() + "\n"


def child_user_id(conversation_id: str, children: int = DEFAULT_CHILDREN) -> str:
    """The child a conversation belongs to: ``"child-%03d" % (sha256-prefix mod children)``.

    Args:
        conversation_id: the dataset's conversation key (``"t_<uuid>"``).
        children: number of children, at least 1.
    """
    if children < 1:
        raise ValueError(f"children must be at least 1, got {children}")
    digest = hashlib.sha256(conversation_id.encode("utf-8")).digest()
    return f"child-{int.from_bytes(digest[:8], 'big') % children:03d}"


def conversation_topic(entities: Iterable[str], entity_to_topic: Mapping[str, str]) -> str:
    """The most frequent topic of ``entities``; ties alphabetical; ``"general"`` if none maps.

    Args:
        entities: entity names, repeated as often as they occur (both agents' reading sets).
        entity_to_topic: entity name -> topic name.
    """
    counts = Counter(entity_to_topic[e] for e in entities if e in entity_to_topic)
    if not counts:
        return FALLBACK_TOPIC
    return min(counts, key=lambda topic: (-counts[topic], topic))


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _event(event_key: str, event_type: str, user_id: str, at: datetime, data: object) -> DemoEvent:
    event_id = str(uuid.uuid5(DEMO_NAMESPACE, event_key))
    body = msgspec.json.encode(
        {
            "event_id": event_id,
            "type": event_type,
            "user_id": user_id,
            "occurred_at": _rfc3339(at),
            "data": data,
        }
    )
    return DemoEvent(event_id=event_id, user_id=user_id, body=body)


def _decode(path: Path, type_: type[_T]) -> _T:
    try:
        return msgspec.json.decode(path.read_bytes(), type=type_)
    except msgspec.DecodeError as exc:  # ValidationError is a subclass
        raise DemoDataError(f"{path}: unexpected content: {exc}") from exc


def load_entity_to_topic(data_dir: Path) -> dict[str, str]:
    """``entity_to_topic.json``: entity name -> topic; every topic must be a contract topic.

    Raises:
        DemoDataError: the file is not a JSON object of strings, or a topic breaks the contract
            rule (1..64 characters from ``a-z 0-9 _``).
    """
    path = data_dir / "entity_to_topic.json"
    mapping = _decode(path, dict[str, str])
    for entity, topic in mapping.items():
        if not _TOPIC_RE.match(topic):
            raise DemoDataError(f"{path}: entity {entity!r} has topic {topic!r}, not a topic name")
    return mapping


def _turn_sentiment(where: str, label: str) -> Sentiment:
    try:
        return SENTIMENT_MAP[label]
    except KeyError:
        raise DemoDataError(
            f"{where}: unknown sentiment label {label!r}; known: {sorted(SENTIMENT_MAP)}"
        ) from None


def _child_rating(where: str, ratings: Mapping[str, str]) -> Rating | Literal[""]:
    if CHILD_AGENT not in ratings:
        raise DemoDataError(f"{where}: no conversation_rating for the child ({CHILD_AGENT})")
    label = ratings[CHILD_AGENT]
    if label == "":
        return ""  # passed through on purpose: an invalid event, dead-lettered by the processor
    try:
        return RATING_MAP[label]
    except KeyError:
        raise DemoDataError(
            f"{where}: unknown conversation_rating {label!r} for {CHILD_AGENT}; "
            f"known: {sorted(RATING_MAP)} or empty"
        ) from None


def iter_demo_events(data_dir: Path, children: int = DEFAULT_CHILDREN) -> Iterator[DemoEvent]:
    """The dataset's conversations as contract events, in publishing (log) order.

    Per conversation: one ``conversation.turn_recorded`` per turn, then one
    ``conversation.completed`` (see ``mapping_description()`` for every rule).

    Args:
        data_dir: directory with ``conversations/``, ``reading_sets/`` and
            ``entity_to_topic.json`` (the bundled copy is ``DEFAULT_DATA_DIR``).
        children: number of children the conversations are spread over, at least 1.

    Yields:
        ``DemoEvent``s; publish them in this order. Deterministic: the same input gives the same
        events, ids and bytes.

    Raises:
        DemoDataError: an unknown sentiment or rating label, an unknown agent, a conversation
            without reading set or child rating, or a file of an unexpected shape.
        OSError: a file is missing or unreadable.
    """
    if children < 1:
        raise ValueError(f"children must be at least 1, got {children}")
    entity_to_topic = load_entity_to_topic(data_dir)
    k = 0
    for split in SPLITS:
        conversations_path = data_dir / "conversations" / f"{split}.json"
        conversations = _decode(conversations_path, dict[str, _Conversation])
        reading_sets = _decode(data_dir / "reading_sets" / f"{split}.json", dict[str, _ReadingSet])
        for conversation_id, conversation in conversations.items():
            where = f"{conversations_path}: conversation {conversation_id}"
            reading_set = reading_sets.get(conversation_id)
            if reading_set is None:
                raise DemoDataError(f"{where}: no reading set in reading_sets/{split}.json")
            entities = [
                section.entity
                for agent_sections in (reading_set.agent_1, reading_set.agent_2)
                for section in agent_sections.values()
            ]
            yield from _conversation_events(
                where,
                conversation_id,
                conversation,
                topic=conversation_topic(entities, entity_to_topic),
                user_id=child_user_id(conversation_id, children),
                start=EPOCH + k * CONVERSATION_SPACING,
            )
            k += 1


def _conversation_events(
    where: str,
    conversation_id: str,
    conversation: _Conversation,
    *,
    topic: str,
    user_id: str,
    start: datetime,
) -> Iterator[DemoEvent]:
    """One conversation's turns, then its ``conversation.completed``."""
    speakers = {CHILD_AGENT: "child", ROBOT_AGENT: "robot"}
    for i, turn in enumerate(conversation.content):
        speaker = speakers.get(turn.agent)
        if speaker is None:
            raise DemoDataError(f"{where} turn {i}: unknown agent {turn.agent!r}")
        data = {
            "conversation_id": conversation_id,
            "topic": topic,
            "speaker": speaker,
            "sentiment": _turn_sentiment(f"{where} turn {i}", turn.sentiment),
        }
        at = start + timedelta(seconds=SECONDS_PER_TURN * i)
        yield _event(f"{conversation_id}/{i}", "conversation.turn_recorded", user_id, at, data)
    turns = len(conversation.content)
    completed = {
        "conversation_id": conversation_id,
        "topic": topic,
        "turns": turns,
        "duration_s": SECONDS_PER_TURN * turns,
        "rating": _child_rating(where, conversation.conversation_rating),
    }
    at = start + timedelta(seconds=SECONDS_PER_TURN * turns)
    yield _event(f"{conversation_id}/completed", "conversation.completed", user_id, at, completed)


def write_jsonl(events: Iterable[DemoEvent], path: Path) -> int:
    """Write each event's body as one line (UTF-8, ``\\n``-terminated); returns how many."""
    count = 0
    with path.open("wb") as out:
        for event in events:
            out.write(event.body)
            out.write(b"\n")
            count += 1
    return count


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m demo.data OUT.jsonl [--data-dir DIR] [--children N]``."""
    parser = argparse.ArgumentParser(
        prog="python -m demo.data",
        description="Write the Topical-Chat demo events, one JSON body per line.",
    )
    parser.add_argument("out", type=Path, help="output file (JSON Lines)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--children", type=int, default=DEFAULT_CHILDREN)
    args = parser.parse_args(argv)
    try:
        count = write_jsonl(iter_demo_events(args.data_dir, args.children), args.out)
    except (OSError, ValueError) as exc:  # DemoDataError is a ValueError
        sys.stderr.write(f"error: {exc}\n")
        return 1
    sys.stdout.write(f"wrote {count} events to {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
