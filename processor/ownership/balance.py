"""Fair share of partitions among live members: which to take and which to hand off. Pure.

Each live member aims at ``ceil(partitions / live members)``; it hands off what it owns above
that and takes free partitions (no lease holder) below it. Members prefer different partitions
(each starts its preference at its rank among the sorted live ids times its share), so they
rarely race for the same lease. The cap is what stops churn: a member at its share never grabs
a partition another member handed off for a newcomer.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class BalancePlan:
    """Partitions to take (free ones, in preference order) and to hand off, and the share."""

    share: int
    take: tuple[int, ...]
    hand_off: tuple[int, ...]


def fair_share(partitions: int, live_members: int) -> int:
    """``ceil(partitions / live_members)``; all partitions when no member is known live."""
    return math.ceil(partitions / max(1, live_members))


def preference(partitions: int, live: Sequence[str], me: str) -> list[int]:
    """Partition numbers in this member's order of preference (a rotation of 0..partitions-1)."""
    members = sorted(set(live) | {me})
    share = fair_share(partitions, len(members))
    start = (members.index(me) * share) % partitions
    return [(start + i) % partitions for i in range(partitions)]


def plan_balance(
    partitions: int,
    live: Sequence[str],
    me: str,
    *,
    owned: Collection[int],
    held_by_others: Collection[int],
    unavailable: Collection[int] = (),
    keep: Collection[int] = (),
) -> BalancePlan:
    """What this member should change to move towards its fair share.

    Args:
        partitions: number of partitions.
        live: ids of the live members (this one is counted even if missing).
        me: this member's id.
        owned: partitions this member owns.
        held_by_others: partitions whose lease another connection holds.
        unavailable: partitions this member must not take (e.g. stopped on a truncated log).
        keep: owned partitions never handed off (a stopped partition keeps its lease, so no
            member retries a log that lost records); they still count towards the share.
    """
    members = set(live) | {me}
    share = fair_share(partitions, len(members))
    order = preference(partitions, list(members), me)
    if len(owned) > share:
        surplus = len(owned) - share
        # Hand off the owned partitions this member likes least.
        least_liked = sorted((p for p in owned if p not in keep), key=order.index, reverse=True)
        return BalancePlan(share, (), tuple(least_liked[:surplus]))
    wanted = share - len(owned)
    free = [p for p in order if p not in owned and p not in held_by_others and p not in unavailable]
    return BalancePlan(share, tuple(free[:wanted]), ())
