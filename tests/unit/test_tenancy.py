"""The tenant plan (``chunkd tenant add``): what it changes, and every layout it refuses."""

from __future__ import annotations

import dataclasses

import pytest

from chunkd.errors import RequestError
from chunkd.tenancy import (
    Account,
    Entry,
    Group,
    GroupMembership,
    OwnDirectory,
    TenantRequest,
    plan_tenant,
)

ALICE = Account("alice", 1001, 1001)
DAEMON_GROUP = Group("chunkd", 990, frozenset())
SOCKET_GROUP = Group("chunkd-users", 991, frozenset({"chunkd"}))
ROOT_DIR = Entry(is_dir=True, is_symlink=False, uid=0, gid=0, mode=0o755)
BASE = TenantRequest(
    tenant=ALICE,
    daemon_user="chunkd",
    daemon_group=DAEMON_GROUP,
    socket_group=SOCKET_GROUP,
    parent="/srv/fl",
    parent_entry=ROOT_DIR,
    client_dir="/srv/fl/client_alice",
    client_dir_entry=None,
)


def test_a_new_tenant_gets_its_directory_and_the_socket_group() -> None:
    assert plan_tenant(BASE) == [
        OwnDirectory("/srv/fl/client_alice", 1001, 990, 0o2750, create=True),
        GroupMembership("alice", "chunkd-users", join=True),
    ]


def test_a_tenant_in_the_reading_group_is_taken_out_of_it() -> None:
    request = dataclasses.replace(BASE, daemon_group=Group("chunkd", 990, frozenset({"alice"})))
    assert GroupMembership("alice", "chunkd", join=False) in plan_tenant(request)


def test_a_second_run_has_nothing_to_do() -> None:
    done = dataclasses.replace(
        BASE,
        socket_group=Group("chunkd-users", 991, frozenset({"chunkd", "alice"})),
        client_dir_entry=Entry(True, False, 1001, 990, 0o2750),
    )
    assert plan_tenant(done) == []


def test_a_directory_made_by_root_or_with_the_wrong_mode_is_handed_over() -> None:
    for entry in (Entry(True, False, 0, 0, 0o755), Entry(True, False, 1001, 990, 0o750)):
        request = dataclasses.replace(BASE, client_dir_entry=entry)
        assert plan_tenant(request)[0] == OwnDirectory(
            "/srv/fl/client_alice", 1001, 990, 0o2750, create=False
        )


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"socket_group": None}, "socket_group is empty"),
        ({"socket_group": Group("chunkd", 990, frozenset())}, "reads every client directory"),
        ({"tenant": Account("root", 0, 0)}, "admin"),
        ({"tenant": Account("chunkd", 990, 990)}, "admin"),
        ({"tenant": Account("alice", 1001, 990)}, "primary group"),
        ({"parent_entry": None}, "does not exist"),
        ({"parent_entry": Entry(True, False, 1001, 0, 0o755)}, "must belong to root"),
        ({"parent_entry": Entry(True, False, 0, 0, 0o775)}, "writable by root alone"),
        ({"parent_entry": Entry(False, True, 0, 0, 0o777)}, "not a directory"),
        ({"client_dir_entry": Entry(False, True, 1001, 1001, 0o777)}, "not a directory"),
        ({"client_dir_entry": Entry(False, False, 1001, 1001, 0o644)}, "not a directory"),
        ({"client_dir_entry": Entry(True, False, 1002, 990, 0o2750)}, "belongs to uid 1002"),
    ],
)
def test_a_layout_that_cannot_isolate_tenants_is_refused(change: dict, reason: str) -> None:
    with pytest.raises(RequestError, match=reason):
        plan_tenant(dataclasses.replace(BASE, **change))


def test_the_daemons_group_with_other_members_is_a_warning() -> None:
    from chunkd.tenancy import reading_group_warning

    assert reading_group_warning("chunkd", [], "chunkd") is None
    assert reading_group_warning("chunkd", ["chunkd"], "chunkd") is None
    warning = reading_group_warning("chunkd", ["chunkd", "bob", "alice"], "chunkd")
    assert warning is not None and "(alice, bob)" in warning and "tenant add" in warning
    many = reading_group_warning("chunkd", [f"u{i:02d}" for i in range(12)], "chunkd")
    assert many is not None and "u09 and 2 more" in many
