"""Poison input at scale: adversarial bodies mixed into valid traffic, on the same partitions.

Hypothesis draws the adversarial bodies (``tests.faults.adversarial``): random bytes, corrupted
JSON, deep nesting, huge numbers, NUL characters, wrong types, unknown types and labels, naive
and out-of-range timestamps, bools for ints, the data of another type... each invalid by
construction; plus bodies that stretch the rules but stay valid (NUL in free text, maximal
lengths and ranges, the first and last representable instants, big and nested unknown fields).
Some valid events are published twice. The database's time zone is not UTC, as an operator may
set it, so the extreme instants are also extreme in the database's local time.

Every invalid body must end up dead-lettered with a reason, every valid one applied exactly once,
no partition may stall and the processor must not crash.
"""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path

import pytest
from psycopg import sql

from processor.publishing.publisher import OutgoingEvent
from processor.settings import Settings
from projections.database import connect, database_name
from tests.faults.adversarial import draw_corpus, samples, with_fresh_event_id
from tests.faults.scale import size
from tests.faults.support import FaultReport, log_text, verify
from tests.integration.support import (
    drain,
    outgoing,
    processor_process,
    publish,
    synthetic_events,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def test_adversarial_bodies_mixed_into_valid_traffic(
    settings: Settings, tmp_path: Path, fault_report: FaultReport
) -> None:
    rng = random.Random(701)
    users = size(400, 3_000)
    traffic = synthetic_events(size(8_000, 50_000), users=users, seed=701)
    user_ids = [f"user-{n:05d}" for n in range(0, users, max(1, users // 20))]
    corpus = draw_corpus(samples(user_ids), size(1_500, 10_000), seed_value=701)
    stretched = [
        with_fresh_event_id(s, uuid.UUID(int=rng.getrandbits(128), version=4))
        for s in corpus
        if s.valid
    ]
    invalid = [s for s in corpus if not s.valid]

    # Interleave: the adversarial bodies at random places among the valid traffic (whose own
    # order is kept), and 2% of the valid events published a second time, later.
    stream: list[tuple[bytes, bool]] = [(body, True) for body in traffic]
    for sample in [*stretched, *invalid]:
        stream.insert(rng.randrange(len(stream) + 1), (sample.body, sample.valid))
    for position in sorted(rng.sample(range(len(stream)), len(traffic) // 50)):
        body, valid = stream[position]
        if valid:
            stream.insert(rng.randrange(position + 1, len(stream) + 1), (body, True))
    to_publish = []
    for index, (body, valid) in enumerate(stream):
        if valid:
            to_publish.extend(outgoing([body]))
        else:
            to_publish.append(OutgoingEvent(f"invalid-{index}", rng.choice(user_ids), body))
    valid_in_log_order = [body for body, valid in stream if valid]
    invalid_bodies = [body for body, valid in stream if not valid]

    with connect(settings.database_url) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET timezone TO 'Asia/Tokyo'").format(
                sql.Identifier(database_name(settings.database_url))
            )
        )
    publish(settings, to_publish)
    log_path = tmp_path / "processor.log"
    with processor_process(settings.with_overrides(batch_size=500), log_path) as process:
        drain(settings)  # zero lag on every partition: none stalled
        assert process.poll() is None, "the processor crashed"
    text = log_text(log_path)
    categories = len({s.category for s in corpus if not s.valid})
    verify(
        settings,
        fault_report,
        scenario="poison input mixed into valid traffic (hypothesis corpus)",
        rounds=1,
        valid=valid_in_log_order,
        invalid=invalid_bodies,
        notes=f"{len(stretched)} adversarial-but-valid, {categories} kinds of invalid, "
        f"{len(traffic) // 50} re-published",
    )
    assert "unexpected failure" not in text
    assert "the database rejected" not in text, "a valid event was refused by the database"
    republished = len(valid_in_log_order) - len(
        {json.loads(b)["event_id"].lower() for b in valid_in_log_order}
    )
    assert republished > 0
