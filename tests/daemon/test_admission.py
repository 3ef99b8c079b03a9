"""Fair shares of the daemon's slots, as pure logic (issue 19): counts in, a refusal out."""

from __future__ import annotations

import pytest

from chunkd.daemon.admission import Holder, Quota, ServerLimits, Slots, Tally, refusal

QUOTA = Quota("requests", total=10, per_uid=3, admin_reserved=4, per_admin_process=2)
ROOT_CLI = Holder(uid=0, pid=100, admin=True)
ROOT_SCRIPT = Holder(uid=0, pid=101, admin=True)


def tenant(uid: int, pid: int = 1) -> Holder:
    return Holder(uid=uid, pid=pid, admin=False)


def fill(slots: Slots, who: Holder, attempts: int) -> int:
    return sum(1 for _ in range(attempts) if slots.take(who) is None)


def test_one_uid_gets_its_share_however_many_processes_it_runs():
    slots = Slots(QUOTA)
    assert fill(slots, tenant(1001, pid=1), 2) == 2
    assert fill(slots, tenant(1001, pid=2), 5) == 1
    assert slots.take(tenant(1001, pid=3)) == (
        "uid 1001 holds too many requests to chunkd (3 of 3); try again later"
    )
    assert slots.take(tenant(1002)) is None  # another tenant is not locked out


def test_tenants_together_leave_the_reserve_to_admins():
    slots = Slots(QUOTA)
    assert [fill(slots, tenant(uid), 3) for uid in (1, 2, 3)] == [3, 3, 0]
    assert slots.held.total == 6  # 10 - 4 reserved
    assert "too many requests" in str(slots.take(tenant(4)))
    assert slots.take(ROOT_CLI) is None


def test_one_admin_process_cannot_take_the_whole_reserve():
    slots = Slots(QUOTA)
    fill(slots, tenant(1), 3)
    fill(slots, tenant(2), 3)
    assert fill(slots, ROOT_SCRIPT, 10) == 2
    assert slots.take(ROOT_SCRIPT) == (
        "this process holds too many requests to chunkd (2 of 2); try again later"
    )
    assert slots.take(ROOT_CLI) is None  # the runaway script leaves another admin room
    assert fill(slots, Holder(uid=4400, pid=7, admin=True), 5) == 1  # then all 10 are taken
    assert slots.take(Holder(uid=0, pid=102, admin=True)) == (
        "chunkd holds too many requests (10); try again later"
    )


def test_a_slot_given_back_can_be_taken_again():
    slots = Slots(QUOTA)
    alice = tenant(1001)
    fill(slots, alice, 3)
    assert slots.take(alice) is not None
    slots.give_back(alice)
    assert slots.held.of_uid(1001) == 2
    assert slots.take(alice) is None
    for _ in range(3):
        slots.give_back(alice)
    assert slots.held.total == 0 and slots.held.of_uid(1001) == 0
    with pytest.raises(ValueError, match="holds no slot"):
        slots.give_back(alice)


def test_a_refused_take_takes_nothing():
    slots = Slots(QUOTA)
    fill(slots, tenant(1), 3)
    before = slots.held.total
    assert slots.take(tenant(1)) is not None
    assert slots.held.total == before


def test_a_reserve_as_large_as_the_total_leaves_tenants_nothing():
    tiny = Quota("connections", total=5, per_uid=64, admin_reserved=16, per_admin_process=128)
    assert refusal(tiny, tenant(1), Tally()) == "chunkd holds too many connections; try again later"
    assert refusal(tiny, ROOT_CLI, Tally([ROOT_SCRIPT] * 4)) is None
    assert refusal(tiny, ROOT_CLI, Tally([ROOT_SCRIPT] * 5)) is not None


def test_a_process_is_its_uid_and_pid():
    """A process that connected as root and again after dropping to a tenant uid is two."""
    held = Tally([ROOT_CLI, ROOT_CLI])
    assert held.of_process(ROOT_CLI) == 2
    assert held.of_process(Holder(uid=1001, pid=ROOT_CLI.pid, admin=False)) == 0


def test_the_default_limits_keep_admins_a_slot_and_tenants_a_fair_share():
    limits = ServerLimits()
    requests = limits.request_quota()
    assert requests.per_uid * 4 <= requests.total  # a tenant gets a quarter at most
    assert requests.per_admin_process < requests.admin_reserved
    slots = Slots(requests)
    for uid in range(1000, 1010):  # ten greedy tenants, one runaway admin process
        fill(slots, tenant(uid), 64)
    fill(slots, ROOT_SCRIPT, 64)
    assert slots.take(ROOT_CLI) is None
    connections = limits.connection_quota()
    assert (connections.total, connections.per_uid, connections.admin_reserved) == (256, 64, 16)
