"""Path races: a tenant swaps a directory of its own for a symlink while the daemon works (issue 9).

The daemon resolves every path beneath the client directory's descriptor, component by
component without following links, reads through the descriptor it opened, and deletes through
the parent directory's descriptor only while the name is still the file it read
(:mod:`chunkd.safepath`). The swaps here are real renames and symlinks against a real daemon.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chunkd import safepath
from chunkd.errors import ForbiddenError, NotACheckpointError

from .conftest import OpenProbe, model_bytes, request, sha256, wait_for, write_atomic

pytestmark = pytest.mark.slow


# -- safepath on its own ---------------------------------------------------------------------------


def test_open_beneath_refuses_links_anywhere_on_the_path(tmp_path: Path) -> None:
    client = tmp_path / "client_1"
    (client / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.pth").write_bytes(b"secret")
    (client / "sub" / "x.pth").write_bytes(b"mine")

    with safepath.open_beneath(client, client / "sub" / "x.pth") as f:
        assert os.pread(f.fd, 10, 0) == b"mine"

    (client / "sub").rename(client / "sub.old")
    (client / "sub").symlink_to(outside)
    with pytest.raises(ForbiddenError, match="symlink"):
        safepath.open_beneath(client, client / "sub" / "x.pth")
    (client / "link.pth").symlink_to(outside / "x.pth")
    with pytest.raises(ForbiddenError):
        safepath.open_beneath(client, client / "link.pth")
    for bad in (client / ".." / "outside" / "x.pth", tmp_path / "outside" / "x.pth", client):
        with pytest.raises(ForbiddenError):
            safepath.open_beneath(client, bad)
    os.mkfifo(client / "fifo.pth")
    with pytest.raises(NotACheckpointError):
        safepath.open_beneath(client, client / "fifo.pth")  # does not block on a FIFO


def test_unlink_follows_the_opened_directory_not_the_name(tmp_path: Path) -> None:
    client = tmp_path / "client_1"
    (client / "sub").mkdir(parents=True)
    other = tmp_path / "client_2"
    other.mkdir()
    (client / "sub" / "r.pth").write_bytes(b"same bytes")
    (other / "r.pth").write_bytes(b"same bytes")

    beneath = safepath.open_beneath(client, client / "sub" / "r.pth")
    (client / "sub").rename(client / "sub.old")
    (client / "sub").symlink_to(other)  # the name now leads to another client's file
    assert beneath.unlink_if_same()
    beneath.close()
    assert (other / "r.pth").read_bytes() == b"same bytes"
    assert not (client / "sub.old" / "r.pth").exists()

    (client / "sub.old" / "y.pth").write_bytes(b"v1")
    beneath = safepath.open_beneath(client, client / "sub.old" / "y.pth")
    (client / "sub.old" / "y2.pth").write_bytes(b"v2")
    os.replace(client / "sub.old" / "y2.pth", client / "sub.old" / "y.pth")
    assert not beneath.unlink_if_same()  # the name is another file now: left alone
    beneath.close()
    assert (client / "sub.old" / "y.pth").read_bytes() == b"v2"


# -- against the daemon ----------------------------------------------------------------------------


def test_delete_after_ingest_never_deletes_through_a_swapped_directory(
    daemon_factory, tmp_path
) -> None:
    """The issue's scenario: the same bytes elsewhere (a global model every client received),
    and client 1 swaps its subdirectory for a link to that place during the ingest."""
    daemon = daemon_factory(delete_after_ingest=True)
    data = model_bytes(seed=7, nbytes=192 << 20)
    victim = tmp_path / "elsewhere" / "round_1.pth"
    write_atomic(victim, data)
    own = daemon.watch_root / "client_1" / "sub" / "round_1.pth"
    write_atomic(own, data)
    attempt = daemon.db("1").with_name(daemon.db("1").name + ".attempt")
    wait_for(attempt.exists, 60, "client 1's ingest to start", interval_s=0.01)
    own.parent.rename(own.parent.with_name("sub.old"))
    own.parent.symlink_to(victim.parent)
    daemon.wait_event(
        lambda e: (
            e.get("client") == "1"
            and e["event"] in ("checkpoint.deleted", "ingest.failed", "checkpoint.rejected")
        ),
        timeout_s=120,
    )
    assert victim.exists() and sha256(victim.read_bytes()) == sha256(data)
    assert not (own.parent.with_name("sub.old") / "round_1.pth").exists()


def test_a_directory_swapped_during_the_settle_delay_reads_nothing_outside(
    daemon_factory, tmp_path
) -> None:
    daemon = daemon_factory(settle_delay="1.5s")
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = model_bytes(seed=99, nbytes=64 << 10)
    write_atomic(outside / "round_5.pth", secret)
    own = daemon.watch_root / "client_1" / "sub" / "round_5.pth"
    write_atomic(own, model_bytes(seed=1, nbytes=64 << 10))
    daemon.wait_event(lambda e: e["event"] == "checkpoint.detected")
    own.parent.rename(own.parent.with_name("sub.old"))
    own.parent.symlink_to(outside)
    probe = OpenProbe(outside)
    rejected = daemon.wait_event(
        lambda e: e["event"] == "checkpoint.rejected" and e.get("client") == "1", timeout_s=60
    )
    assert "symlink" in str(rejected[0]["error"])
    assert probe.events() == []
    reply, _ = request(daemon.socket, {"cmd": "list", "client": "1"})
    shas = [r["sha256"] for r in reply.obj["result"]["clients"][0]["rounds"]]
    assert sha256(secret) not in shas


def test_socket_ingest_through_a_symlinked_subdirectory_is_forbidden(
    daemon_factory, tmp_path
) -> None:
    daemon = daemon_factory()
    outside = tmp_path / "outside"
    outside.mkdir()
    write_atomic(outside / "round_3.pth", model_bytes(seed=3, nbytes=16 << 10))
    client = daemon.watch_root / "client_1"
    client.mkdir()
    (client / "sub").symlink_to(outside)
    daemon.wait_event(lambda e: e["event"] == "client.added")
    probe = OpenProbe(outside)
    reply, _ = request(
        daemon.socket,
        {"cmd": "ingest", "client": "1", "path": str(client / "sub" / "round_3.pth")},
    )
    assert reply.code == "forbidden", reply.raw
    assert probe.events() == []
