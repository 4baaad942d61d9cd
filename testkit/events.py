"""Synthetic events for tests and the benchmark: seeded, skewed over users, every type."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from processor.publishing.publisher import OutgoingEvent
from testkit.reference import SENTIMENTS

TOPICS = ("music", "sports", "books", "movies", "science", "fashion")
RATINGS = ("excellent", "good", "passable", "not_good", "poor")
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


def synthetic_events(count: int, users: int, seed: int) -> list[bytes]:
    """``count`` valid event bodies over ``users`` users, skewed (a few users get most events),
    all three types, negative and positive deltas, random offsets in occurred_at (not sorted)."""
    rng = random.Random(seed)
    weights = [1.0 / (rank + 1) ** 1.1 for rank in range(users)]
    user_ids = [f"user-{n:05d}" for n in range(users)]
    chosen = rng.choices(user_ids, weights=weights, k=count)
    bodies = []
    for index, user in enumerate(chosen):
        kind = rng.random()
        if kind < 0.6:
            event_type = "conversation.turn_recorded"
            data: dict[str, Any] = {
                "conversation_id": f"c-{index // 10}",
                "topic": rng.choice(TOPICS),
                "speaker": rng.choice(("child", "robot")),
                "sentiment": rng.choice(SENTIMENTS),
            }
        elif kind < 0.8:
            event_type = "conversation.completed"
            data = {
                "conversation_id": f"c-{index // 10}",
                "topic": rng.choice(TOPICS),
                "turns": rng.randint(0, 40),
                "duration_s": round(rng.uniform(0, 900), 3),
                "rating": rng.choice(RATINGS),
            }
        else:
            event_type = "friendship.adjusted"
            data = {"delta": rng.randint(-60, 60), "reason": f"adjusted by test {index}"}
        offset_h = rng.choice((0, 2, -7))
        moment = EPOCH + timedelta(seconds=rng.randint(0, 86_400 * 30))
        occurred_at = moment.astimezone(timezone(timedelta(hours=offset_h))).isoformat()
        bodies.append(
            json.dumps(
                {
                    "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    "type": event_type,
                    "user_id": user,
                    "occurred_at": occurred_at,
                    "data": data,
                }
            ).encode()
        )
    return bodies


def outgoing(bodies: Sequence[bytes]) -> list[OutgoingEvent]:
    """Valid bodies as publishable events (routing key = user_id)."""
    result = []
    for body in bodies:
        event = json.loads(body)
        result.append(OutgoingEvent(event["event_id"], event["user_id"], body))
    return result
