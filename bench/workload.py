"""The benchmark's events: generated once per run, seeded, skewed over users, all three types
(negative deltas and ratings included), shared by every step.

Each step takes a prefix of the same list, so the previous design's few thousand events are the
first events the processor drains.
"""

from __future__ import annotations

from dataclasses import dataclass

from processor.publishing.publisher import OutgoingEvent
from testkit.events import outgoing, synthetic_events


@dataclass(frozen=True)
class Workload:
    """Event bodies (JSON bytes) and the same events ready to publish, in the same order."""

    bodies: list[bytes]
    events: list[OutgoingEvent]
    users: int
    seed: int

    def head(self, count: int) -> Workload:
        """The first ``count`` events (all of them when ``count`` is larger)."""
        return Workload(self.bodies[:count], self.events[:count], self.users, self.seed)

    def distinct_users(self) -> int:
        """How many users the events touch."""
        return len({event.user_id for event in self.events})


def make_workload(count: int, users: int, seed: int) -> Workload:
    """``count`` events over up to ``users`` users (``tests.integration.support.synthetic_events``:
    a few users get most events, 60 % turns, 20 % completions, 20 % adjustments in -60..60)."""
    bodies = synthetic_events(count, users=users, seed=seed)
    return Workload(bodies, outgoing(bodies), users, seed)
