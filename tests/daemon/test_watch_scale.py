"""A real daemon over many client directories: one watch; reconciliation follows changes."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.daemon.checkpoints import save_model

CLIENTS = 200


def inotify_instances(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify"
        except OSError:
            continue
    return count


def atime_is_updated_by_a_listing(scratch: Path) -> bool:
    """relatime or strictatime: reading a directory whose atime is older than its mtime sets it."""
    scratch.mkdir()
    st = os.stat(scratch)
    os.utime(scratch, ns=(0, st.st_mtime_ns))
    os.listdir(scratch)
    updated = os.stat(scratch).st_atime_ns != 0
    scratch.rmdir()
    return updated


def scans(daemon) -> int:
    return sum(1 for e in daemon.events() if e["event"] == "scan.completed")


def wait_scans(daemon, more: int) -> None:
    target = scans(daemon) + more
    daemon.wait_event(lambda e: e["event"] == "scan.completed", count=target, timeout_s=30)


@pytest.mark.scale  # hundreds of clients: `make integration` (the Makefile says why)
def test_daemon_with_200_clients_has_one_inotify_instance_and_lists_only_changes(
    make_daemon, tmp_path
):
    """200 client directories (a quarter in Hydra-style trees): one inotify instance, threads
    that do not double with the clients, every file written after start-up ingested (some deep
    inside their client), and reconciliation passes with nothing changed read no client
    directory (a directory's atime moves when it is listed)."""
    daemon = make_daemon(start=False, rescan_interval="2s", settle_delay="0.2s")
    dirs = []
    for i in range(CLIENTS):
        if i % 4 == 3:
            dirs.append(daemon.watch_root / "multirun" / "2024-06-01" / f"t{i}" / f"client_{i}")
        else:
            dirs.append(daemon.watch_root / f"client_{i}")
        dirs[-1].mkdir(parents=True)
    daemon.start()
    pid = daemon.proc.pid
    assert inotify_instances(pid) == 1
    threads = len(os.listdir(f"/proc/{pid}/task"))
    assert threads < 2 * CLIENTS, f"{threads} threads for {CLIENTS} clients"
    for i, directory in enumerate(dirs):
        where = directory / "ckpt" if i % 10 == 0 else directory
        save_model(where / "model_round_1.pt", seed=i, elements=64)
    daemon.wait_event(lambda e: e["event"] == "checkpoint.ingested", count=CLIENTS, timeout_s=120)
    assert {e["client"] for e in daemon.ingested()} == {str(i) for i in range(CLIENTS)}
    assert inotify_instances(pid) == 1

    if not atime_is_updated_by_a_listing(tmp_path / "atime-probe"):
        pytest.skip("this filesystem does not update a directory's atime when it is listed")
    wait_scans(daemon, 2)  # the passes that list what the ingests changed (new databases)
    for directory in dirs:
        os.utime(directory, ns=(0, os.stat(directory).st_mtime_ns))
    wait_scans(daemon, 2)
    read = [d for d in dirs if os.stat(d).st_atime_ns != 0]
    assert read == [], f"{len(read)} client directories listed by passes with nothing changed"


def test_events_lost_to_an_inotify_overflow_are_found_by_the_next_pass(make_daemon):
    """The daemon is stopped (SIGSTOP) while more events than the kernel queues
    (``max_queued_events``) happen, then a checkpoint is rewritten in place (its directory does
    not change). The overflow makes the next pass list every client: the new version is taken
    long before the backstop's full listing would."""
    queue = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    daemon = make_daemon(start=False, rescan_interval="3s", settle_delay="0.2s")
    client = daemon.watch_root / "client_1"
    path = client / "model_round_1.pth"
    save_model(path, seed=1, elements=256)
    noise = daemon.watch_root / "noise"
    noise.mkdir()
    (noise / "a").touch()
    (noise / "b").touch()
    newer = noise / "newer.bin"
    save_model(newer, seed=2, elements=256)
    daemon.start()
    daemon.wait_event(lambda e: e["event"] == "checkpoint.ingested")
    wait_scans(daemon, 1)  # the directory's new database is listed: nothing is pending
    assert daemon.proc is not None
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    try:
        for i in range(queue + 2000):  # alternating: identical consecutive events are merged
            os.utime(noise / ("a" if i % 2 else "b"))
        stamp = os.stat(client).st_mtime_ns
        with open(path, "r+b") as f:
            f.write(newer.read_bytes())
            f.truncate()
        assert os.stat(client).st_mtime_ns == stamp
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)
    continued = time.monotonic()
    daemon.wait_event(
        lambda e: e["event"] == "watcher.overflow" and "lost" in str(e.get("hint")), timeout_s=30
    )
    # backstop: 11.5 passes of 3 s after the last listing; the overflow's pass comes within 3 s
    daemon.wait_event(lambda e: e["event"] == "checkpoint.ingested", count=2, timeout_s=20)
    assert time.monotonic() - continued < 20
