"""Replica slots (disjoint core shares) and the data-parallel plan."""

from __future__ import annotations

import pytest

from heron.engine.replica import DataParallelPlan, ReplicaSlot, plan_slots


def test_cores_are_split_into_disjoint_contiguous_shares() -> None:
    slots = plan_slots(3, frozenset({0, 1, 2, 3, 4, 5, 6}))
    assert slots == [
        ReplicaSlot(0, 3, frozenset({0, 1, 2})),
        ReplicaSlot(1, 3, frozenset({3, 4})),
        ReplicaSlot(2, 3, frozenset({5, 6})),
    ]
    assert plan_slots(1, frozenset({4, 7})) == [ReplicaSlot(0, 1, frozenset({4, 7}))]


def test_more_replicas_than_cores_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 3 CPUs"):
        plan_slots(3, frozenset({0, 1}))
    with pytest.raises(ValueError):
        plan_slots(0, frozenset({0, 1}))


def test_plan() -> None:
    assert not DataParallelPlan().enabled  # one local engine: the plain client, as ever
    assert DataParallelPlan(2).enabled
    assert DataParallelPlan(1, factory=lambda slot: pytest.fail("not called")).enabled
    with pytest.raises(ValueError, match="router policy"):
        DataParallelPlan(2, policy="random")
    with pytest.raises(ValueError):
        DataParallelPlan(0)
