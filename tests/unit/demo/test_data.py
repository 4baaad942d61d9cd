"""The Topical-Chat demo converter: valid events, deterministic ids, topic and label rules."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from demo.data import (
    DEFAULT_DATA_DIR,
    DEMO_NAMESPACE,
    RATING_MAP,
    SENTIMENT_MAP,
    DemoEvent,
    child_user_id,
    iter_demo_events,
    main,
    mapping_description,
    write_jsonl,
)
from demo.errors import DemoDataError
from schemas import (
    RATINGS,
    SENTIMENTS,
    ConversationCompleted,
    EventValidationError,
    TurnRecorded,
    decode_event,
)

SPLITS = ("valid_freq", "valid_rare", "test_freq")

ENTITY_TO_TOPIC = {
    "Jazz": "music",
    "Piano": "music",
    "Poetry": "books",
    "Harry Potter": "books",
    "Football": "sports",
    "Tennis": "sports",
}


def _conversation(
    turns: list[tuple[str, str]],
    child_rating: str = "Good",
    robot_rating: str = "Excellent",
) -> dict[str, Any]:
    """A conversation in the dataset's shape; ``turns`` is ``[(agent, sentiment label)]``."""
    return {
        "article_url": "https://example.invalid/article",
        "config": "A",
        "content": [
            {
                "message": f"message {i}",
                "agent": agent,
                "sentiment": label,
                "knowledge_source": ["FS1"],
                "turn_rating": "",
            }
            for i, (agent, label) in enumerate(turns)
        ],
        "conversation_rating": {"agent_1": robot_rating, "agent_2": child_rating},
    }


def _reading_set(agent_1: list[str], agent_2: list[str] | None = None) -> dict[str, Any]:
    """A reading set in the dataset's shape: ``FS1..FSn`` with the given entities per agent."""

    def sections(entities: list[str]) -> dict[str, Any]:
        return {
            f"FS{n}": {"entity": entity, "shortened_wiki_lead_section": n, "fun_facts": ["t3_x"]}
            for n, entity in enumerate(entities, start=1)
        }

    return {
        "article_url": "https://example.invalid/article",
        "config": "A",
        "agent_1": sections(agent_1),
        "agent_2": sections(agent_1 if agent_2 is None else agent_2),
    }


def _write_dataset(
    root: Path,
    conversations: dict[str, dict[str, dict[str, Any]]],
    reading_sets: dict[str, dict[str, dict[str, Any]]],
    entity_to_topic: dict[str, str] | None = None,
) -> Path:
    """Write a tiny dataset under ``root``; splits not given are written as empty objects."""
    (root / "conversations").mkdir(parents=True)
    (root / "reading_sets").mkdir()
    for split in SPLITS:
        (root / "conversations" / f"{split}.json").write_text(
            json.dumps(conversations.get(split, {}))
        )
        (root / "reading_sets" / f"{split}.json").write_text(
            json.dumps(reading_sets.get(split, {}))
        )
    (root / "entity_to_topic.json").write_text(
        json.dumps(ENTITY_TO_TOPIC if entity_to_topic is None else entity_to_topic)
    )
    return root


def _alternating(labels: list[str]) -> list[tuple[str, str]]:
    """Turns alternating agent_1, agent_2, ... with the given labels."""
    return [(f"agent_{1 + i % 2}", label) for i, label in enumerate(labels)]


def _decoded(events: list[DemoEvent]) -> list[TurnRecorded | ConversationCompleted]:
    out: list[TurnRecorded | ConversationCompleted] = []
    for event in events:
        decoded = decode_event(event.body)
        assert isinstance(decoded, TurnRecorded | ConversationCompleted)
        out.append(decoded)
    return out


def _completions(events: list[DemoEvent]) -> dict[str, dict[str, Any]]:
    """conversation id -> ``data`` of its completion (raw JSON, so invalid values show too)."""
    result: dict[str, dict[str, Any]] = {}
    for event in events:
        body = json.loads(event.body)
        if body["type"] == "conversation.completed":
            result[body["data"]["conversation_id"]] = body["data"]
    return result


@pytest.fixture
def small_dataset(tmp_path: Path) -> Path:
    """Four conversations over three splits, with a tie, a fallback and an empty child rating."""
    conversations = {
        "valid_freq": {
            "c_most": _conversation(_alternating(["Happy", "Neutral", "Sad"]), "Excellent"),
            "c_tie": _conversation(_alternating(["Curious to dive deeper", "Angry"]), "Not Good"),
        },
        "valid_rare": {
            "c_none": _conversation(_alternating(["Surprised"]), "", robot_rating="Good"),
        },
        "test_freq": {
            "c_both": _conversation(_alternating(["Fearful", "Disgusted", "Happy", "Sad"]), "Poor"),
        },
    }
    reading_sets = {
        "valid_freq": {
            # sports twice, music once (per agent): sports.
            "c_most": _reading_set(["Football", "Jazz", "Tennis"]),
            # music and books once each, one unmapped: tie -> books (alphabetical), although
            # music comes first in the file and in entity_to_topic.json.
            "c_tie": _reading_set(["Piano", "Unmapped thing", "Poetry"]),
        },
        "valid_rare": {"c_none": _reading_set(["Nobody", "Nothing", "Nowhere"])},
        # agent_1 alone says music (2 of 3); with agent_2 books wins 3 to 2.
        "test_freq": {
            "c_both": _reading_set(
                ["Jazz", "Piano", "Poetry"], ["Harry Potter", "Poetry", "Unmapped"]
            )
        },
    }
    return _write_dataset(tmp_path / "tc", conversations, reading_sets)


def test_bundled_data_decodes_with_the_project_decoder() -> None:
    events = list(iter_demo_events(DEFAULT_DATA_DIR))
    invalid = []
    for event in events:
        try:
            decoded = decode_event(event.body)
        except EventValidationError as error:
            invalid.append((event, error))
            continue
        assert decoded.event_id == event.event_id
        assert decoded.user_id == event.user_id
    # Every invalid event must be an empty-rating completion rejected on data.rating.
    for bad_event, bad_error in invalid:
        body = json.loads(bad_event.body)
        assert body["type"] == "conversation.completed"
        assert body["data"]["rating"] == ""
        assert bad_error.field == "data.rating"
    completions = _completions(events)
    assert len(completions) == 1617
    assert len(events) == 1617 + 35133
    assert len(invalid) == sum(1 for data in completions.values() if data["rating"] == "")
    assert len({e.event_id for e in events}) == len(events)
    assert {e.user_id for e in events} <= {f"child-{n:03d}" for n in range(200)}


def test_small_dataset_decodes_except_the_empty_rating(small_dataset: Path) -> None:
    events = list(iter_demo_events(small_dataset))
    failures = []
    for event in events:
        try:
            decode_event(event.body)
        except EventValidationError as error:
            failures.append((json.loads(event.body), error))
    assert len(failures) == 1
    body, failure = failures[0]
    assert body["type"] == "conversation.completed"
    assert body["data"]["conversation_id"] == "c_none"
    assert body["data"]["rating"] == ""
    assert failure.field == "data.rating"


def test_deterministic_ids_and_bytes(small_dataset: Path) -> None:
    first = list(iter_demo_events(small_dataset))
    second = list(iter_demo_events(small_dataset))
    assert first == second
    assert len({e.event_id for e in first}) == len(first)
    assert first[0].event_id == str(uuid.uuid5(DEMO_NAMESPACE, "c_most/0"))
    assert first[3].event_id == str(uuid.uuid5(DEMO_NAMESPACE, "c_most/completed"))
    namespace = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/alexa/Topical-Chat")
    assert namespace == DEMO_NAMESPACE


def test_order_times_and_completion(small_dataset: Path) -> None:
    events = list(iter_demo_events(small_dataset))
    bodies = [json.loads(e.body) for e in events]
    keys = [
        (b["data"]["conversation_id"], b["type"].split(".")[1], b["occurred_at"]) for b in bodies
    ]
    epoch = datetime(2024, 1, 1, tzinfo=UTC)

    def at(k: int, seconds: int) -> str:
        return (epoch + timedelta(minutes=20 * k, seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")

    assert keys == [
        ("c_most", "turn_recorded", at(0, 0)),
        ("c_most", "turn_recorded", at(0, 15)),
        ("c_most", "turn_recorded", at(0, 30)),
        ("c_most", "completed", at(0, 45)),
        ("c_tie", "turn_recorded", at(1, 0)),
        ("c_tie", "turn_recorded", at(1, 15)),
        ("c_tie", "completed", at(1, 30)),
        ("c_none", "turn_recorded", at(2, 0)),
        ("c_none", "completed", at(2, 15)),
        ("c_both", "turn_recorded", at(3, 0)),
        ("c_both", "turn_recorded", at(3, 15)),
        ("c_both", "turn_recorded", at(3, 30)),
        ("c_both", "turn_recorded", at(3, 45)),
        ("c_both", "completed", at(3, 60)),
    ]
    assert bodies[0]["occurred_at"] == "2024-01-01T00:00:00Z"
    completions = _completions(events)
    assert completions["c_most"]["turns"] == 3
    assert completions["c_most"]["duration_s"] == 45.0
    assert completions["c_both"]["turns"] == 4
    assert completions["c_both"]["duration_s"] == 60.0
    # Every event of a conversation belongs to the same child.
    for conversation_id in completions:
        users = {
            e.user_id
            for e, b in zip(events, bodies, strict=True)
            if b["data"]["conversation_id"] == conversation_id
        }
        assert users == {child_user_id(conversation_id)}


def test_topic_rule(small_dataset: Path) -> None:
    events = list(iter_demo_events(small_dataset))
    topics: dict[str, set[str]] = {}
    for body in (json.loads(e.body) for e in events):
        topics.setdefault(body["data"]["conversation_id"], set()).add(body["data"]["topic"])
    assert topics == {
        "c_most": {"sports"},
        "c_tie": {"books"},
        "c_none": {"general"},
        "c_both": {"books"},
    }


def test_sentiment_and_speaker_mapping(tmp_path: Path) -> None:
    labels = [
        "Happy",
        "Curious to dive deeper",
        "Surprised",
        "Neutral",
        "Sad",
        "Fearful",
        "Angry",
        "Disgusted",
    ]
    # Each label once from each agent: agent_1 speaks first, then the order is reversed.
    turns = _alternating(labels) + [(f"agent_{2 - i % 2}", label) for i, label in enumerate(labels)]
    root = _write_dataset(
        tmp_path / "tc",
        {"valid_freq": {"c": _conversation(turns)}},
        {"valid_freq": {"c": _reading_set(["Jazz"])}},
    )
    decoded = [e for e in _decoded(list(iter_demo_events(root))) if isinstance(e, TurnRecorded)]
    expected = [
        "happy",
        "curious",
        "surprised",
        "neutral",
        "sad",
        "fearful",
        "angry",
        "disgusted",
    ]
    speakers = {"agent_1": "robot", "agent_2": "child"}
    assert [(e.data.speaker, e.data.sentiment.label) for e in decoded] == [
        (speakers[agent], expected[labels.index(label)]) for agent, label in turns
    ]
    assert set(SENTIMENT_MAP.values()) == set(SENTIMENTS)


def test_rating_mapping_uses_the_child_agent(tmp_path: Path) -> None:
    pairs = {
        "Excellent": "excellent",
        "Good": "good",
        "Passable": "passable",
        "Not Good": "not_good",
        "Poor": "poor",
    }
    conversations = {
        f"c{i}": _conversation(_alternating(["Happy", "Neutral"]), label, robot_rating="")
        for i, label in enumerate(pairs)
    }
    root = _write_dataset(
        tmp_path / "tc",
        {"valid_rare": conversations},
        {"valid_rare": {cid: _reading_set(["Jazz"]) for cid in conversations}},
    )
    completed = [
        e for e in _decoded(list(iter_demo_events(root))) if isinstance(e, ConversationCompleted)
    ]
    assert [e.data.rating for e in completed] == list(pairs.values())
    assert set(RATING_MAP.values()) == set(RATINGS)


@pytest.mark.parametrize("label", ["Bored", "", "happy", "Curious"])
def test_unknown_sentiment_label_raises(tmp_path: Path, label: str) -> None:
    root = _write_dataset(
        tmp_path / "tc",
        {"test_freq": {"c_bad": _conversation(_alternating(["Happy", label]))}},
        {"test_freq": {"c_bad": _reading_set(["Jazz"])}},
    )
    with pytest.raises(DemoDataError, match=r"c_bad turn 1: unknown sentiment label") as info:
        list(iter_demo_events(root))
    assert repr(label) in str(info.value)


def test_unknown_rating_label_raises(tmp_path: Path) -> None:
    root = _write_dataset(
        tmp_path / "tc",
        {"valid_freq": {"c_bad": _conversation(_alternating(["Happy"]), "Meh")}},
        {"valid_freq": {"c_bad": _reading_set(["Jazz"])}},
    )
    with pytest.raises(DemoDataError, match=r"c_bad: unknown conversation_rating 'Meh'"):
        list(iter_demo_events(root))


def test_unknown_agent_and_missing_reading_set_raise(tmp_path: Path) -> None:
    root = _write_dataset(
        tmp_path / "a",
        {"valid_freq": {"c": _conversation([("agent_3", "Happy")])}},
        {"valid_freq": {"c": _reading_set(["Jazz"])}},
    )
    with pytest.raises(DemoDataError, match="unknown agent 'agent_3'"):
        list(iter_demo_events(root))
    root = _write_dataset(
        tmp_path / "b",
        {"valid_freq": {"c": _conversation(_alternating(["Happy"]))}},
        {"valid_freq": {}},
    )
    with pytest.raises(DemoDataError, match="no reading set"):
        list(iter_demo_events(root))


def test_child_user_id() -> None:
    digest = hashlib.sha256(b"t_abc").digest()
    assert child_user_id("t_abc") == f"child-{int.from_bytes(digest[:8], 'big') % 200:03d}"
    assert child_user_id("t_abc", children=1) == "child-000"
    with pytest.raises(ValueError, match="children"):
        child_user_id("t_abc", children=0)


def test_children_spread(small_dataset: Path) -> None:
    users = {e.user_id for e in iter_demo_events(small_dataset, children=1)}
    assert users == {"child-000"}


def test_write_jsonl_and_cli(
    small_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = list(iter_demo_events(small_dataset))
    out = tmp_path / "out.jsonl"
    assert write_jsonl(events, out) == len(events)
    assert out.read_bytes().splitlines() == [e.body for e in events]
    cli_out = tmp_path / "cli.jsonl"
    assert main([str(cli_out), "--data-dir", str(small_dataset)]) == 0
    assert cli_out.read_bytes() == out.read_bytes()
    assert f"wrote {len(events)} events" in capsys.readouterr().out
    assert main([str(tmp_path / "x.jsonl"), "--data-dir", str(tmp_path / "missing")]) == 1


def test_bodies_are_plain_envelopes(small_dataset: Path) -> None:
    for event in iter_demo_events(small_dataset):
        body = msgspec.json.decode(event.body)
        assert list(body) == ["event_id", "type", "user_id", "occurred_at", "data"]
        assert body["occurred_at"].endswith("Z")
        assert b"\n" not in event.body


def test_mapping_description_is_the_documented_mapping() -> None:
    text = mapping_description()
    for phrase in (
        "agent_2 plays the child",
        "15 s",
        "20 min",
        '"general"',
        '"rating": ""',
        "Curious to dive deeper -> curious",
        "Not Good -> not_good",
        "UUID version 5",
    ):
        assert phrase in text
