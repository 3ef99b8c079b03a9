"""``list`` over many clients (issue 20): a real daemon, 300 client directories with a database
each. A second ``list`` with nothing changed opens no database, and after an ingest, a prune, a
forget and a database replaced underneath, ``list --json`` still says exactly what the databases
hold: the summary cache never serves a summary older than its database.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from chunkd.ingest import IngestOptions, ingest_file
from chunkd.store import ChunkStore
from chunkd.summary import summarize_store
from tests.daemon.checkpoints import save_model
from tests.daemon.conftest import DaemonProcess

CLIENTS = 300
PATTERNS = ("*.pth", "*.pt")


def _name(i: int) -> str:
    return f"{i:04d}"


def _build(watch_root: Path) -> None:
    """Every client's database made offline with the engine, from its own checkpoint (round 1):
    the daemon's start-up scan then finds each file already stored. In threads: the time is
    the commits' fsyncs, which wait without the GIL."""

    def one(i: int) -> None:
        directory = watch_root / f"client_{_name(i)}"
        checkpoint = directory / "model_round_1.pth"
        save_model(checkpoint, i, elements=64)
        with ChunkStore.open_writer(directory / f"client_{_name(i)}_chunks.db") as store:
            ingest_file(checkpoint, store, IngestOptions())

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(CLIENTS)))


def _listed(daemon: DaemonProcess, *args: str) -> dict[str, dict[str, object]]:
    out = daemon.cli("list", "--json", *args)
    assert out.returncode == 0, out.stderr
    return {str(c["client"]): c for c in json.loads(out.stdout)["clients"]}


def _held(daemon: DaemonProcess, client: str) -> dict[str, object]:
    """What the database holds now, read by this process (the ``list --db`` document)."""
    with ChunkStore.open_reader(daemon.db(client)) as store:
        return summarize_store(
            client, store, client_dir=daemon.db(client).parent, file_patterns=PATTERNS
        )


def _cache(daemon: DaemonProcess) -> dict[str, int]:
    out = daemon.cli("status", "--json")
    assert out.returncode == 0, out.stderr
    counts: dict[str, int] = json.loads(out.stdout)["list_cache"]
    return counts


def _after(daemon: DaemonProcess, change: Callable[[], object], client: str) -> None:
    """Make ``change``, then: ``list`` shows the database as it is now, and re-reads only it."""
    change()
    before = _cache(daemon)
    listed = _listed(daemon)
    assert listed[client] == _held(daemon, client)
    after = _cache(daemon)
    assert after["read"] - before["read"] == 1, (before, after)
    assert _listed(daemon, "--client", client)[client] == _held(daemon, client)


@pytest.mark.scale  # hundreds of clients: `make integration` (the Makefile says why)
def test_list_reads_only_changed_databases_and_never_serves_stale_rounds(make_daemon) -> None:
    daemon = make_daemon(start=False, chunk_keep_rounds=1)
    _build(daemon.watch_root)
    daemon.start()
    clients = [_name(i) for i in range(CLIENTS)]

    first = _listed(daemon)
    assert sorted(first) == clients
    for client in clients[::37]:
        assert first[client] == _held(daemon, client)
    assert all(entry["round_count"] == 1 for entry in first.values())
    cold = _cache(daemon)
    assert cold["cached"] == CLIENTS and cold["read"] >= CLIENTS

    # Nothing changed: the second listing opens no database at all.
    again = _listed(daemon)
    assert again == first
    warm = _cache(daemon)
    assert warm["read"] == cold["read"]
    assert warm["reused"] - cold["reused"] == CLIENTS

    # An ingest (round 2 into client 0007).
    target = daemon.watch_root / "client_0007" / "model_round_2.pth"
    _after(
        daemon,
        lambda: (
            save_model(target, 1007, elements=64),
            daemon.wait_event(
                lambda e: e["event"] == "checkpoint.ingested" and e.get("client") == "0007"
            ),
        ),
        "0007",
    )
    assert [r["round"] for r in _listed(daemon)["0007"]["rounds"]] == [1, 2]  # type: ignore[union-attr]

    # A prune (keep 1: round 1 goes).
    _after(daemon, lambda: daemon.cli("prune", "--client", "0007"), "0007")
    assert [r["round"] for r in _listed(daemon)["0007"]["rounds"]] == [2]  # type: ignore[union-attr]

    # A forget (client 0011's only round).
    _after(daemon, lambda: daemon.cli("forget", "--client", "0011", "--round", "1"), "0011")
    assert _listed(daemon)["0011"]["round_count"] == 0

    # A database replaced underneath: client 0013's file becomes a copy of client 0014's.
    def replace() -> None:
        copy = daemon.db("0013").with_name("replacement.tmp")
        shutil.copyfile(daemon.db("0014"), copy)
        os.replace(copy, daemon.db("0013"))

    _after(daemon, replace, "0013")
    assert _listed(daemon)["0013"]["rounds"] == _listed(daemon)["0014"]["rounds"]

    # A checkpoint file removed changes only files_on_disk, which is counted afresh each time.
    (daemon.watch_root / "client_0020" / "model_round_1.pth").unlink()
    assert _listed(daemon)["0020"]["files_on_disk"] == 0

    # A client whose directory goes is no longer kept in the cache.
    shutil.rmtree(daemon.watch_root / "client_0030")
    daemon.wait_event(lambda e: e["event"] == "client.removed" and e.get("client") == "0030")
    _listed(daemon)
    assert _cache(daemon)["cached"] < CLIENTS
