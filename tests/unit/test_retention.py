"""Which rounds retention removes (pure policy): the N highest stay, leased rounds are held."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chunkd.retention import RetentionPlan, plan_retention


def test_keeps_the_highest_numbered_rounds():
    plan = plan_retention([5, 1, 9, 3, 7], 2)
    assert plan == RetentionPlan(keep=(7, 9), remove=(1, 3, 5), held=())


def test_numbers_not_arrival_order_decide():
    assert plan_retention([10, 2, 30, 4], 1).keep == (30,)


def test_keep_zero_keeps_everything():
    assert plan_retention([3, 1, 2], 0) == RetentionPlan(keep=(1, 2, 3), remove=(), held=())


@pytest.mark.parametrize("keep", [3, 4, 100])
def test_fewer_rounds_than_kept(keep):
    assert plan_retention([1, 2, 3], keep).remove == ()


def test_no_rounds():
    assert plan_retention([], 5) == RetentionPlan(keep=(), remove=(), held=())


def test_leased_old_round_is_held_not_removed():
    plan = plan_retention([1, 2, 3, 4], 1, leased={2})
    assert plan.remove == (1, 3)
    assert plan.held == (2,)
    assert plan.keep == (2, 4)


def test_lease_on_a_kept_round_changes_nothing():
    assert plan_retention([1, 2, 3], 2, leased={3}) == plan_retention([1, 2, 3], 2)


def test_duplicate_round_numbers_count_once():
    assert plan_retention([1, 1, 2, 2, 3], 2) == RetentionPlan(keep=(2, 3), remove=(1,), held=())


def test_negative_keep_is_refused():
    with pytest.raises(ValueError):
        plan_retention([1, 2], -1)


@given(
    rounds=st.sets(st.integers(0, 10**6), max_size=40),
    keep=st.integers(0, 50),
    leased=st.sets(st.integers(0, 10**6), max_size=5),
)
def test_plan_properties(rounds, keep, leased):
    plan = plan_retention(rounds, keep, leased)
    assert set(plan.keep) | set(plan.remove) == rounds
    assert not set(plan.keep) & set(plan.remove)
    assert list(plan.keep) == sorted(plan.keep) and list(plan.remove) == sorted(plan.remove)
    assert set(plan.held) <= leased & set(plan.keep)
    assert not set(plan.remove) & leased
    if keep == 0:
        assert plan.remove == ()
    else:
        newest = sorted(rounds)[-keep:]
        assert set(newest) <= set(plan.keep)
        assert len(plan.keep) == min(keep, len(rounds)) + len(plan.held)
        if plan.remove:
            assert max(plan.remove) < min(newest)


def test_removes_nothing_agrees_with_the_plan() -> None:
    """The daemon skips a retention pass's prune (and its database open) on this rule alone: it
    must never skip a store the plan would remove something from."""
    from dataclasses import dataclass as _dataclass
    from itertools import product

    from chunkd.retention import plan_versions, removes_nothing

    @_dataclass(frozen=True)
    class V:
        round_num: int
        generation: int
        current: bool
        order_key: tuple[int, int, int]

    for rounds, generations, keep in product(range(8), range(8), range(6)):
        versions = [V(r, 9, True, (0, r, 9)) for r in range(1, rounds + 1)]
        versions += [
            V(1 + g % max(rounds, 1), g, False, (0, 1 + g % max(rounds, 1), g))
            for g in range(generations if rounds else 0)
        ]
        plan = plan_versions(versions, keep)
        if removes_nothing(rounds, generations if rounds else 0, keep):
            assert not plan.remove and not plan.generations_removed, (rounds, generations, keep)
