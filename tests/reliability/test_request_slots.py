"""Fair request slots, tried by real second uids (issue 19, finding 2).

Before: requests being served shared one global cap of 64. A tenant sent 64 ``restore``
requests of its own client and never read them: every slot was held, root's ``ping`` got
``busy`` for as long as the tenant liked and ``chunkd status`` exited 7, and each unread restore
kept a lease pinning its round against retention.

Here the server runs in the test process, as root, with a short write timeout (the
:class:`ServerLimits` knob of tests/daemon/test_server.py; the installed daemon uses 30 s),
over real databases; tenants are ``setpriv`` child processes with uids that have no passwd
entry; root's commands go through the real CLI.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from chunkd.daemon.server import ServerLimits
from tests.daemon.test_server import World, run_cli

from .conftest import read_answer, request, sha256, wait_for
from .tenants import holding_restores, shared_root, tenant_requests

pytestmark = pytest.mark.slow

SOCKET_GID = 4300  # the socket's group: every tenant has it
ALICE = (4201, SOCKET_GID, ())  # owns client 1
BOB = (4202, SOCKET_GID, ())  # owns client 2
WRITE_TIMEOUT_S = 4.0
LIMITS = ServerLimits(write_timeout_s=WRITE_TIMEOUT_S, linger_s=0.3, stop_timeout_s=2)
#: Round 1 of client 1: 4 MB of float32, far more than a socket's or a pipe's buffer, so an
#: unread restore of it blocks until the daemon gives up.
BIG_ELEMENTS = 1_000_000


@pytest.fixture
def world() -> Iterator[World]:
    with shared_root() as root:
        w = World(root)
        try:
            w.add_round("1", 1, elements=BIG_ELEMENTS)
            w.add_round("1", 2)
            w.add_round("1", 3)
            w.add_round("2", 7)
            os.chown(w.clients["1"].directory, ALICE[0], SOCKET_GID)
            os.chown(w.clients["2"].directory, BOB[0], SOCKET_GID)
            (root / "fl").chmod(0o755)
            w.serve(LIMITS, socket_group=str(SOCKET_GID))
            yield w
        finally:
            w.close()


def _prune(world: World) -> dict[str, Any]:
    reply, _ = request(world.socket, {"cmd": "prune", "client": "1"})
    assert reply.ok, reply.raw
    (entry,) = reply.obj["result"]["clients"]
    return entry


def _root_status_cli(world: World) -> float:
    started = time.monotonic()
    done = run_cli(world, "status")
    took = time.monotonic() - started
    assert done.returncode == 0, (done.returncode, done.stderr)  # 7 was "busy"
    assert b"uptime" in done.stdout
    return took


@pytest.mark.parametrize("transfer", ["frames", "fd"])
def test_one_tenants_unread_restores_leave_everyone_else_a_slot(
    world: World, transfer: str, figures
) -> None:
    restore = {"cmd": "restore", "client": "1", "round": 1, "transfer": transfer}
    started = time.monotonic()
    with holding_restores(world.socket, ALICE, 70, restore) as held:
        cli_s = _root_status_cli(world)
        (listed,) = tenant_requests(world.socket, BOB, {"cmd": "list", "client": "2"})
        assert listed["ok"], listed  # another tenant is served too
        assert [c["client"] for c in listed["result"]["clients"]] == ["2"]
        raw_s = time.monotonic()
        reply, _ = request(world.socket, {"cmd": "status"}, timeout_s=1.0)
        raw_s = time.monotonic() - raw_s
        assert reply.ok, reply.raw
        # all of that happened while alice's restores were still held, leases and all
        assert world.state().leases.leased("1") == frozenset({1})
        while_held = _prune(world)
        assert while_held["rounds_held"] == [1] and while_held["rounds_removed"] == []
        # 64 connections (her per-uid cap), 16 of them served (her share of requests)
        assert held == {"held": 16, "busy_request": 48, "busy_connection": 6, "other": 0}

        wait_for(
            lambda: not world.state().leases.any_held("1"),
            WRITE_TIMEOUT_S + 5,
            "the unread restores to give their leases back",
            interval_s=0.05,
        )
        released_s = time.monotonic() - started
        # her holder still runs and still reads nothing; her slots are back all the same
        (again,) = tenant_requests(
            world.socket, ALICE, {"cmd": "restore", "client": "1", "round": 2, "transfer": "frames"}
        )
        assert again["payload_sha256"] == sha256(world.files[("1", 2)]), again
        after = _prune(world)
        assert after["rounds_removed"] == [1], after  # retention can take the round now
    assert cli_s < 1.0 and raw_s < 1.0, (cli_s, raw_s)
    assert released_s < WRITE_TIMEOUT_S + 3, released_s
    figures.update(
        transfer=transfer,
        tenant_restores=70,
        held=held,
        root_status_cli_s=round(cli_s, 3),
        root_status_socket_s=round(raw_s, 3),
        write_timeout_s=WRITE_TIMEOUT_S,
        slots_and_leases_back_after_s=round(released_s, 2),
    )
    figures.save()


def test_one_admin_process_cannot_take_every_request_slot(world: World, figures) -> None:
    """A runaway admin script (root, one process) holds 8 unread restores, not all 64."""
    line = json.dumps({"cmd": "restore", "client": "1", "round": 1, "transfer": "frames"})
    held: list[socket.socket] = []
    answers: dict[str, int] = {}
    try:
        for _ in range(70):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(10)
            sock.connect(str(world.socket))
            sock.sendall(line.encode() + b"\n")
            held.append(sock)
            first = sock.recv(1 << 12, socket.MSG_PEEK)  # the header or an error line, unread
            code = "ok" if first.startswith(b'{"ok":true') else json.loads(first)["error"]["code"]
            answers[code] = answers.get(code, 0) + 1
        cli_s = _root_status_cli(world)  # another admin process: the reserve is not all gone
        (listed,) = tenant_requests(world.socket, BOB, {"cmd": "list", "client": "2"})
        assert listed["ok"], listed
        assert answers == {"ok": 8, "busy": 62}, answers
        # reading one restore to its end gives its slot back to the same process
        reader = held[0]
        reader.settimeout(30)
        answer = read_answer(reader, bytearray())
        assert answer is not None and answer[1] == world.files[("1", 1)]
    finally:
        for sock in held:
            sock.close()
    assert cli_s < 1.0, cli_s
    figures.update(admin_process_restores=70, admin_process_held=8, root_status_cli_s=cli_s)
    figures.save()
