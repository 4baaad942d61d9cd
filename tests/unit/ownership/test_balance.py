"""Fair share of partitions among members (pure planning)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from processor.ownership.balance import fair_share, plan_balance, preference


def test_fair_share_rounds_up() -> None:
    assert fair_share(16, 1) == 16
    assert fair_share(16, 3) == 6
    assert fair_share(16, 16) == 1
    assert fair_share(16, 20) == 1
    assert fair_share(16, 0) == 16


def test_a_lone_member_takes_every_free_partition() -> None:
    plan = plan_balance(16, ["a"], "a", owned=set(), held_by_others=set())
    assert sorted(plan.take) == list(range(16))
    assert plan.hand_off == ()


def test_a_member_above_its_share_hands_off_the_surplus_only() -> None:
    plan = plan_balance(16, ["a", "b", "c"], "a", owned=set(range(16)), held_by_others=set())
    assert plan.share == 6
    assert len(plan.hand_off) == 10
    assert plan.take == ()


def test_a_member_at_its_share_takes_nothing_even_when_partitions_are_free() -> None:
    plan = plan_balance(16, ["a", "b"], "a", owned=set(range(8)), held_by_others=set(range(8, 12)))
    assert plan.take == ()
    assert plan.hand_off == ()


def test_partitions_held_by_others_or_stopped_are_never_taken() -> None:
    plan = plan_balance(16, ["a"], "a", owned=set(), held_by_others={0, 1, 2}, unavailable={3})
    assert set(plan.take) == set(range(4, 16))


def test_members_prefer_different_partitions() -> None:
    members = ["a", "b", "c"]
    firsts = {preference(16, members, m)[0] for m in members}
    assert len(firsts) == 3


@given(
    partitions=st.integers(min_value=1, max_value=64),
    members=st.integers(min_value=1, max_value=10),
)
def test_members_taking_in_turn_end_up_owning_every_partition_without_overlap(
    partitions: int, members: int
) -> None:
    ids = [f"m{i}" for i in range(members)]
    owned: dict[str, set[int]] = {m: set() for m in ids}
    for _ in range(3):  # a few rounds, every member planning in turn
        for me in ids:
            held = set().union(*(owned[o] for o in ids if o != me))
            plan = plan_balance(partitions, ids, me, owned=owned[me], held_by_others=held)
            owned[me] -= set(plan.hand_off)
            owned[me] |= set(plan.take)
    all_owned = [p for m in ids for p in owned[m]]
    assert sorted(all_owned) == list(range(partitions))  # each exactly once
    assert max(len(o) for o in owned.values()) <= fair_share(partitions, members)


def test_a_stopped_partition_is_never_handed_off_and_counts_towards_the_share() -> None:
    owned = set(range(16))
    plan = plan_balance(16, ["a", "b"], "a", owned=owned, held_by_others=set(), keep={15, 14})
    assert len(plan.hand_off) == 8
    assert not {14, 15} & set(plan.hand_off)
