"""A user's history folded from raw partition records (no broker, no database)."""

from __future__ import annotations

import json
import uuid

from processor.reading.log_record import LogRecord
from processor.replay.compare import RowDiff
from processor.replay.history import HistoryBuilder
from processor.replay.report import difference_lines
from testkit.reference import reference_fold
from tests.integration.support import synthetic_events


def adjusted(user: str, delta: int, event_id: str | None = None) -> bytes:
    return json.dumps(
        {
            "event_id": event_id or str(uuid.uuid4()),
            "type": "friendship.adjusted",
            "user_id": user,
            "occurred_at": "2024-05-01T10:00:00+02:00",
            "data": {"delta": delta, "reason": "test"},
        }
    ).encode()


def test_the_history_folds_to_the_reference_fold_of_the_user() -> None:
    bodies = synthetic_events(3_000, users=40, seed=4)
    records = [LogRecord(offset * 2, body) for offset, body in enumerate(bodies)]  # holes
    user = "user-00003"
    builder = HistoryBuilder(user)
    for start in range(0, len(records), 700):  # batch borders do not matter
        builder.take(5, records[start : start + 700])
    expected = reference_fold(bodies)[user]
    history = builder.history
    assert history.friendship.score == expected["score"]
    assert history.friendship.events_applied == expected["events_applied"]
    assert history.friendship.last_event_at == expected["last_event_at"]
    assert [line.score for line in history.lines][-1] == expected["score"]
    assert len(history.lines) == expected["events_applied"]
    assert history.records_scanned == 3_000


def test_clamping_duplicates_and_dead_letters_are_marked_in_log_order() -> None:
    reused, repeated = str(uuid.uuid4()), str(uuid.uuid4())
    bodies = [
        adjusted("kid", -5, repeated),
        adjusted("other", 10, reused),  # another user's event has this id first
        adjusted("kid", 30),
        adjusted("kid", 20, reused),  # so this one is a dead letter (a producer reused the id)
        b'{"user_id": "kid", "type": "friendship.adjusted"}',  # invalid, names the user
        b"not json",  # invalid, names nobody
        adjusted("kid", -100),
        adjusted("kid", 70, repeated),  # a redelivery: no effect
    ]
    builder = HistoryBuilder("kid")
    builder.take(0, [LogRecord(i, b) for i, b in enumerate(bodies)])
    lines = builder.history.lines
    assert [(line.offset, line.score) for line in lines] == [
        (0, 0),
        (2, 30),
        (3, None),
        (4, None),
        (6, 0),
        (7, None),
    ]
    assert lines[0].note == "clamped from -5"
    assert lines[2].note == "dead letter: event_id already applied for another user at offset 1"
    assert lines[3].note.startswith("dead letter: ")
    assert lines[4].note == "clamped from -70"
    assert lines[5].note == "duplicate of offset 0: no effect"
    assert builder.history.friendship.events_applied == 3


def test_a_difference_line_names_the_user_the_column_and_both_values() -> None:
    diff = RowDiff(
        "friendships",
        ("user-7",),
        "user-7",
        {"score": 12, "events_applied": 3, "last_event_at": None},
        {"score": 40, "events_applied": 3, "last_event_at": None},
    )
    assert difference_lines(diff) == [
        "  user-7               friendship               score: live 12, replay 40"
    ]
    missing = RowDiff("topic_metrics", ("user-7", "music"), "user-7", None, {"turns": 2})
    (line,) = difference_lines(missing)
    assert "topic music" in line and "missing in live" in line and "turns=2" in line
