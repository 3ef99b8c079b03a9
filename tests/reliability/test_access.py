"""Who may do what over the socket, tried by real second uids against a real daemon (issue 9).

The daemon runs as root (as CI does); tenants are child processes switched by ``setpriv`` to
uids that have no passwd entry, so their groups can only come from the connection
(``SO_PEERGROUPS``). The matrix the test walks is recorded as a figure and is the one in
docs/RELIABILITY.md and docs/PROTOCOL.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from .conftest import model_bytes, ping, request, sha256, write_atomic
from .tenants import holding, shared_root, tenant_requests

pytestmark = pytest.mark.slow

SOCKET_GID = 4300  # the socket's group: every tenant has it, as group chunkd under systemd
ADMIN_GID = 4400  # in allowed_gids
ALICE = (4201, SOCKET_GID, ())  # owns client_a
BOB = (4202, SOCKET_GID, ())  # owns client_b
MALLORY = (4204, SOCKET_GID, ())  # owns no client
OPERATOR = (4203, SOCKET_GID, (ADMIN_GID,))  # admin through a supplementary group only

READS = ("list", "verify", "restore", "export")


def _code(answer: dict[str, Any]) -> str:
    return "ok" if answer.get("ok") else str(answer["error"]["code"])


@pytest.fixture
def tenant_daemon(daemon_factory):
    """A daemon with clients a (alice's), b (bob's, group-shared with every tenant), c (root's)."""
    with shared_root() as root:
        daemon = daemon_factory(
            root=root / "d",
            start=False,
            socket_group=str(SOCKET_GID),
            allowed_gids=[ADMIN_GID],
        )
        shas = {}
        for client, owner in (("a", ALICE[0]), ("b", BOB[0]), ("c", 0)):
            directory = daemon.watch_root / f"client_{client}"
            directory.mkdir()
            data = model_bytes(seed=ord(client), nbytes=64 << 10)
            write_atomic(directory / "round_1.pth", data)
            shas[client] = sha256(data)
            os.chown(directory, owner, SOCKET_GID)
        # bob's directory is readable by the shared group: group membership must grant nothing
        (daemon.watch_root / "client_b").chmod(0o2750)
        daemon.root.chmod(0o755)
        daemon.watch_root.chmod(0o755)
        daemon.start()
        daemon.wait_event(lambda e: e["event"] == "checkpoint.ingested", count=3)
        daemon.shas = shas
        yield daemon


def _ask(daemon, who, cmd: str, client: str | None) -> str:
    dry_run = cmd.endswith(" --dry-run")  # a dry-run prune changes nothing: a read (issue 10)
    cmd = cmd.removesuffix(" --dry-run")
    req: dict[str, Any] = {"cmd": cmd}
    if client is not None:
        req["client"] = client
    if cmd in ("restore", "export"):
        req.update(round=1, transfer="frames")
    if cmd == "export":
        req["format"] = "safetensors"
    if cmd == "forget":  # admins only, even as a dry run (issue 17)
        req["round"] = 1
    if cmd == "ingest":
        req["path"] = str(daemon.watch_root / f"client_{client}" / "round_1.pth")
    if dry_run:
        req["dry_run"] = True
    (answer,) = tenant_requests(daemon.socket, who, req)
    return _code(answer)


def test_access_matrix(tenant_daemon, figures) -> None:
    daemon = tenant_daemon
    matrix: dict[str, dict[str, str]] = {}
    for name, who in (("alice", ALICE), ("mallory", MALLORY), ("operator", OPERATOR)):
        row = {}
        for cmd in (*READS, "prune --dry-run", "prune", "forget --dry-run", "ingest"):
            for client in ("a", "b"):
                row[f"{cmd} {client}"] = _ask(daemon, who, cmd, client)
        row["status"] = _ask(daemon, who, "status", None)
        row["ping"] = _ask(daemon, who, "ping", None)
        matrix[name] = row
    figures["access_matrix"] = matrix
    figures.save()

    # alice reads her own client only, changes nothing
    for cmd in (*READS, "prune --dry-run"):
        assert matrix["alice"][f"{cmd} a"] == "ok", (cmd, matrix["alice"])
        assert matrix["alice"][f"{cmd} b"] == "forbidden", (cmd, matrix["alice"])
        assert matrix["mallory"][f"{cmd} a"] == "forbidden"
        assert matrix["operator"][f"{cmd} b"] == "ok"
    for cmd in ("prune", "forget --dry-run", "ingest"):
        assert matrix["alice"][f"{cmd} a"] == "forbidden"
        assert matrix["mallory"][f"{cmd} a"] == "forbidden"
        assert matrix["operator"][f"{cmd} a"] == "ok", matrix["operator"]
    for name in matrix:
        assert matrix[name]["status"] == matrix[name]["ping"] == "ok"


def test_list_and_verify_show_only_own_clients(tenant_daemon) -> None:
    daemon = tenant_daemon
    list_all, verify_all, restore = tenant_requests(
        daemon.socket,
        ALICE,
        {"cmd": "list"},
        {"cmd": "verify"},
        {"cmd": "restore", "client": "a", "round": 1, "transfer": "frames"},
    )
    assert [c["client"] for c in list_all["result"]["clients"]] == ["a"]
    assert [c["client"] for c in verify_all["result"]["clients"]] == ["a"]
    assert restore["payload_sha256"] == daemon.shas["a"]
    (nothing,) = tenant_requests(daemon.socket, MALLORY, {"cmd": "list"})
    assert nothing["result"]["clients"] == []
    (status,) = tenant_requests(daemon.socket, ALICE, {"cmd": "status"})
    assert set(status["result"]["clients"]) == {"a"}  # other tenants' paths are not hers
    assert status["result"]["clients_watched"] == 3
    (everything,) = tenant_requests(daemon.socket, OPERATOR, {"cmd": "list"})
    assert [c["client"] for c in everything["result"]["clients"]] == ["a", "b", "c"]
    reply, _ = request(daemon.socket, {"cmd": "list"})  # root, the daemon's own uid
    assert [c["client"] for c in reply.obj["result"]["clients"]] == ["a", "b", "c"]
    # root's rejected file: its path and error are the operator's to see, not alice's
    (daemon.watch_root / "client_c" / "round_2.pth").write_bytes(b"not a checkpoint")
    daemon.wait_event(lambda e: e["event"] == "checkpoint.rejected")
    (seen_by_operator,) = tenant_requests(daemon.socket, OPERATOR, {"cmd": "status"})
    assert seen_by_operator["result"]["last_error"]["client"] == "c"
    (status,) = tenant_requests(daemon.socket, ALICE, {"cmd": "status"})
    assert status["result"]["last_error"] is None
    assert status["result"]["ingesting"] == [] and status["result"]["verifying"] == []


def test_connection_cap_is_per_uid_not_per_process(tenant_daemon, figures) -> None:
    """Two processes of one uid share its cap (64); the old per-pid cap let each hold 128."""
    daemon = tenant_daemon
    with (
        holding(daemon.socket, MALLORY, 40) as first,
        holding(daemon.socket, MALLORY, 40) as second,
    ):
        assert first == {"held": 40, "refused": 0}
        assert second["held"] == 24 and second["refused"] == 16, second
        (answer,) = tenant_requests(daemon.socket, ALICE, {"cmd": "ping"})
        assert answer["ok"], answer  # another tenant is not locked out
    figures["connections_per_uid"] = 64
    figures.save()


def test_tenants_cannot_lock_admins_out(tenant_daemon, figures) -> None:
    """Five tenants take every slot they may (240 of 256); root and admins still get in."""
    daemon = tenant_daemon
    uids = [(4210 + i, SOCKET_GID, ()) for i in range(5)]
    with (
        holding(daemon.socket, uids[0], 60) as h0,
        holding(daemon.socket, uids[1], 60) as h1,
        holding(daemon.socket, uids[2], 60) as h2,
        holding(daemon.socket, uids[3], 60) as h3,
        holding(daemon.socket, uids[4], 60) as h4,
    ):
        held = sum(h["held"] for h in (h0, h1, h2, h3, h4))
        assert held == 240, (h0, h1, h2, h3, h4)
        ping(daemon.socket)  # root
        (answer,) = tenant_requests(daemon.socket, OPERATOR, {"cmd": "ping"})
        assert answer["ok"], answer
    figures.update(tenant_connections_held=held, admin_reserved_slots=16)
    figures.save()


def test_access_survives_a_renamed_directory(tenant_daemon) -> None:
    """Ownership is judged when the request is served: a chown takes effect at once."""
    daemon = tenant_daemon
    directory: Path = daemon.watch_root / "client_a"
    os.chown(directory, BOB[0], SOCKET_GID)
    assert _ask(daemon, ALICE, "restore", "a") == "forbidden"
    assert _ask(daemon, BOB, "restore", "a") == "ok"
