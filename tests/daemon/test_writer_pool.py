"""The writer pool's promises kept from the lane-per-client daemon (issue 20).

Databases are no longer opened at start-up, yet a database another process writes still stops
the start (before anything is served), and one taken by another process later is retried until
it is free, as before.
"""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest

from chunkd.store import ChunkStore
from tests.daemon.checkpoints import restored_bytes, save_model

pytestmark = pytest.mark.slow


def test_a_database_held_by_another_process_refuses_the_start(make_daemon):
    daemon = make_daemon()
    save_model(daemon.watch_root / "client_1" / "model_round_1.pth", 1)
    daemon.wait_event(lambda e: e["event"] == "checkpoint.ingested")
    assert daemon.stop() == 0
    with ChunkStore.open_writer(daemon.db("1")):  # another writer: this test
        result = subprocess.run(
            [sys.executable, "-m", "chunkd.cli.main", "serve", "--config", str(daemon.config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "held by another writer" in output and "db_path" in output, output
    daemon.start()  # released: it starts, and serves what is stored
    assert daemon.rounds("1") == [1]
    assert daemon.stop() == 0


def test_a_database_held_after_the_start_is_retried_until_free(make_daemon):
    daemon = make_daemon()
    db = daemon.db("2")
    holder = ChunkStore.open_writer(db)  # creates client_2/ with its database, and holds it
    try:
        content = save_model(db.parent / "model_round_1.pth", 2)
        daemon.wait_event(
            lambda e: e["event"] == "ingest.failed" and "held by another writer" in str(e)
        )
    finally:
        holder.close()
    daemon.wait_event(lambda e: e["event"] == "checkpoint.ingested", timeout_s=30)
    assert restored_bytes(db, 1) == content
    assert daemon.stop() == 0


def _lanes(tmp_path, count, writers, stores, hash_pool):
    import contextlib
    import threading

    from chunkd.daemon.lanes import ClientLane
    from chunkd.ingest import IngestOptions

    lanes = []
    for i in range(count):
        directory = tmp_path / f"client_{i}"
        directory.mkdir()
        lanes.append(
            ClientLane(
                str(i),
                directory,
                directory / f"client_{i}_chunks.db",
                options=IngestOptions(),
                settle_delay_s=0.05,
                keep_rounds=0,
                delete_after_ingest=False,
                lease_gate=lambda _client: contextlib.nullcontext(frozenset()),
                ingest_slots=threading.Semaphore(writers.size),
                pool=hash_pool,
                writers=writers,
                stores=stores,
            )
        )
    return lanes


def test_a_lane_runs_on_one_writer_at_a_time_in_submit_order(tmp_path):
    """Invariant: a client's writes are serialized and in order, whichever writer runs them."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from chunkd.daemon.stores import StoreCache
    from chunkd.daemon.writers import WriterPool

    writers, stores = WriterPool(4), StoreCache(capacity=6)
    runs: list[tuple[str, int, str, float, float]] = []
    lock = threading.Lock()

    def job(client, seq):
        def run(store):
            assert store.path.name == f"client_{client}_chunks.db"
            began = time.monotonic()
            time.sleep(0.002)
            with lock:
                runs.append((client, seq, threading.current_thread().name, began, time.monotonic()))

        return run

    with ThreadPoolExecutor(2) as hash_pool:
        lanes = _lanes(tmp_path, 30, writers, stores, hash_pool)
        writers.start()
        try:
            futures = [lane.submit(job(lane.client_id, s)) for s in range(15) for lane in lanes]
            for future in futures:
                future.result(timeout=120)
            assert len(stores) <= 6
        finally:
            writers.stop()
            stores.close_all()
    assert {name for *_, name, _, _ in runs} <= {f"chunkd-writer-{i}" for i in range(4)}
    for lane in lanes:
        mine = [r for r in runs if r[0] == lane.client_id]
        assert [r[1] for r in mine] == list(range(15)), "in submit order"
        assert all(a[4] <= b[3] for a, b in itertools.pairwise(mine)), "never two at once"


def test_idle_lanes_cost_no_thread_and_no_wakeup(tmp_path):
    """Invariant: an idle client costs no thread, no descriptor and no periodic work."""
    import os
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from chunkd.daemon.stores import StoreCache
    from chunkd.daemon.writers import WriterPool

    threads_before = threading.active_count()
    fds_before = len(os.listdir("/proc/self/fd"))
    writers, stores = WriterPool(4), StoreCache()
    with ThreadPoolExecutor(2) as hash_pool:
        lanes = _lanes(tmp_path, 1000, writers, stores, hash_pool)
        writers.start()
        try:
            time.sleep(1.0)
            assert writers.slices == 0  # nothing polls a lane
            assert threading.active_count() == threads_before + 4
            assert len(os.listdir("/proc/self/fd")) == fds_before
            assert not any(lane.db_path.exists() for lane in lanes), "no database made"
            # a file offered to one lane: its settle deadline wakes that lane only, then idle
            content = save_model(lanes[7].directory / "model_round_1.pth", 7)
            assert lanes[7].offer(lanes[7].directory / "model_round_1.pth")
            deadline = time.monotonic() + 30
            while lanes[7].stats.ingested == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert lanes[7].stats.ingested == 1
            settled = writers.slices
            time.sleep(0.5)
            assert writers.slices == settled
            assert sum(lane.db_path.exists() for lane in lanes) == 1
        finally:
            writers.stop()
            stores.close_all()
    assert restored_bytes(lanes[7].db_path, 1) == content


def test_an_ingest_that_failed_on_our_side_has_its_directory_listed_again(tmp_path):
    """Disk full or a database error leaves no record, so the file must be offered again; the
    reconciliation pass skips unchanged directories (watcher), so intake asks for a listing."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import structlog

    from chunkd.daemon.intake import Intake
    from chunkd.daemon.outcomes import LaneStats
    from chunkd.daemon.settle import SettleTable
    from chunkd.ingest import IngestOptions

    directory = tmp_path / "client_1"
    directory.mkdir()
    path = directory / "model_round_1.pth"
    save_model(path, seed=1)
    db = directory / "client_1_chunks.db"
    ChunkStore.open_writer(db).close()
    asked: list[int] = []
    with ThreadPoolExecutor(2) as pool, ChunkStore.open_reader(db) as read_only:
        intake = Intake(
            directory,
            db,
            options=IngestOptions(),
            ingest_slots=threading.Semaphore(1),
            pool=pool,
            stats=LaneStats(),
            on_our_failure=lambda: asked.append(1),
        )
        pending = SettleTable(0.0)
        intake.take_settled(
            read_only,  # writing it fails: our side, not the file's
            path,
            pending,
            delete=False,
            logger=structlog.get_logger("test"),
            report=lambda result: None,
        )
    assert asked == [1]


def test_a_retention_pass_opens_no_database_that_holds_no_more_than_it_keeps(tmp_path):
    """After a burst of first rounds to every client, a pass must not open each database to find
    nothing to remove (10,000 clients: a minute of CPU); a client with more rounds is pruned."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from chunkd.daemon.stores import StoreCache
    from chunkd.daemon.writers import WriterPool

    writers, stores = WriterPool(2), StoreCache(8)
    with ThreadPoolExecutor(2) as hash_pool:
        (lane,) = _lanes(tmp_path, 1, writers, stores, hash_pool)
        lane._keep_rounds = 2
        writers.start()
        try:
            for round_num in (1, 2):
                path = lane.directory / f"model_round_{round_num}.pth"
                save_model(path, seed=round_num)
                lane.submit_ingest(path, None).result(timeout=60)
            while True:  # the ingest's slice ends after its future is done: let it finish
                slices = writers.slices
                time.sleep(0.3)
                if writers.slices == slices and lane.queue_depth == 0:
                    break
            lane.prune_scheduled()  # 2 rounds, keep 2: nothing to do, nothing queued
            time.sleep(0.3)
            assert writers.slices == slices and lane.queue_depth == 0
            path = lane.directory / "model_round_3.pth"
            save_model(path, seed=3)
            lane.submit_ingest(path, None).result(timeout=60)
            lane.prune_scheduled()  # 3 rounds, keep 2: pruned
            deadline = time.monotonic() + 30
            while lane.held.rounds != (2, 3) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert lane.held.rounds == (2, 3)
        finally:
            lane.stop()
            writers.stop()
            stores.close_all()
