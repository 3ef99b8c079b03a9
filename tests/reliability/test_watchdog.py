"""Liveness from progress, not job length; a file that keeps killing the daemon is set aside.

Issue 9: a checkpoint that took longer than the watchdog's stall limit made systemd kill the
daemon, and the start-up scan offered the same file again, forever. Now a lane is healthy while
its ingest keeps storing chunks (the ``progress`` heartbeat), and every ingest is recorded
durably before it streams, so the third death on the same version of a file sets it aside
with ``checkpoint.rejected``.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from chunkd.daemon.attempts import MAX_ATTEMPTS, AttemptLog
from chunkd.daemon.lanes import ClientLane
from chunkd.daemon.stores import StoreCache
from chunkd.daemon.writers import WriterPool
from chunkd.ingest import IngestOptions
from chunkd.store import FileIdentity

from .conftest import model_bytes, request, wait_for, write_atomic

pytestmark = pytest.mark.slow


def test_a_long_ingest_that_keeps_storing_chunks_is_healthy(tmp_path: Path, figures) -> None:
    directory = tmp_path / "client_1"
    directory.mkdir()
    path = directory / "round_1.pth"
    torch.save({"w": torch.randn(384 << 18)}, path)  # 384 MiB: ~1,500 chunks of 256 KiB
    pool = ThreadPoolExecutor(max_workers=2)
    writers = WriterPool(2)
    stores = StoreCache()
    lane = ClientLane(
        "1",
        directory,
        directory / "client_1_chunks.db",
        # raw chunks: the point is the progress callback per stored chunk; with the default
        # codec a loaded 2-core machine starves the encode pool past the 0.25 s stall bound
        options=IngestOptions(max_chunk_bytes=256 << 10, compression="none", delta=False),
        settle_delay_s=0.0,
        keep_rounds=0,
        delete_after_ingest=False,
        lease_gate=lambda _client: contextlib.nullcontext(frozenset()),
        ingest_slots=threading.Semaphore(1),
        pool=pool,
        writers=writers,
        stores=stores,
    )
    stall_s = 0.25
    writers.start()
    try:
        started = time.monotonic()
        future = lane.submit_ingest(path, None)
        busy_samples = unhealthy = 0
        while not future.done():
            if lane.stats.busy_since is not None:
                busy_samples += 1
                # the lane, and the pool's view (what the daemon's watchdog asks)
                unhealthy += not lane.healthy(stall_s) or not writers.healthy(stall_s)
            time.sleep(0.01)
        duration = time.monotonic() - started
        assert future.result().round_num == 1
    finally:
        lane.stop()
        writers.stop()
        stores.close_all()
        pool.shutdown()
    figures.update(ingest_s=round(duration, 2), stall_s=stall_s, busy_samples=busy_samples)
    figures.save()
    assert duration > 3 * stall_s, "the ingest was too quick to show anything"
    assert busy_samples > 10 and unhealthy == 0


def _attempt_count(path: Path) -> int:
    try:
        return int(json.loads(path.read_text())["count"])
    except (OSError, ValueError, KeyError):
        return 0


def test_a_file_that_killed_the_daemon_three_times_is_set_aside(daemon_factory, figures) -> None:
    daemon = daemon_factory()
    path = daemon.watch_root / "client_1" / "round_1.pth"
    write_atomic(path, model_bytes(seed=5, nbytes=256 << 20))
    attempt = daemon.db("1").with_name(daemon.db("1").name + ".attempt")
    for death in range(1, MAX_ATTEMPTS + 1):
        wait_for(lambda n=death: _attempt_count(attempt) == n, 60, f"attempt {death}", 0.01)
        daemon.stop(signal.SIGKILL)  # what the OOM killer or systemd's watchdog does
        daemon.start()
    rejected = daemon.wait_event(lambda e: e["event"] == "checkpoint.rejected", timeout_s=60)
    assert f"died {MAX_ATTEMPTS} times" in str(rejected[0]["error"]), rejected
    assert rejected[0]["reason"] == "CrashedDaemonError"
    assert not attempt.exists()
    reply, _ = request(daemon.socket, {"cmd": "list", "client": "1"})
    assert reply.obj["result"]["clients"][0]["round_count"] == 0

    # Set aside until it changes: a restart does not offer it again; a new version is taken.
    daemon.stop()
    daemon.start()
    time.sleep(1.0)
    assert sum(e["event"] == "checkpoint.rejected" for e in daemon.events()) == 1
    write_atomic(path, model_bytes(seed=6, nbytes=64 << 10))
    daemon.wait_event(lambda e: e["event"] == "checkpoint.ingested")
    figures.update(deaths_before_set_aside=MAX_ATTEMPTS)
    figures.save()


def test_a_planted_link_beside_the_database_is_never_followed(tmp_path: Path) -> None:
    """With databases in the client directories (the seed's layout) a tenant can plant links
    where the attempt record goes; the daemon neither writes nor reads through them."""
    victim = tmp_path / "victim"
    victim.write_text("keep")
    attempts = AttemptLog(tmp_path / "client_1_chunks.db")
    (tmp_path / "client_1_chunks.db.attempt.tmp").symlink_to(victim)
    identity = FileIdentity(1, 2, 3)
    attempts.begin("/srv/fl/client_1/round_1.pth", identity, 1)
    assert victim.read_text() == "keep"
    assert attempts.previous("/srv/fl/client_1/round_1.pth", identity) == 1
    attempts.path.unlink()
    attempts.path.symlink_to(victim)
    assert attempts.previous("/srv/fl/client_1/round_1.pth", identity) == 0
    attempts.end()
    assert victim.read_text() == "keep"
