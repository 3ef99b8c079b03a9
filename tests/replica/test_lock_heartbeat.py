"""Issue 19's suspicion, confirmed: under a low ``max_upload_rate`` one chunk PUT outlasted the
upload lock (refreshed only between chunks), so another host's sweep ran mid-upload and deleted
chunks the upload had found present and was about to reference. Locks now have a heartbeat, and
a holder whose lock may have gone stale stops instead of going on."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from chunkd.errors import BusyError
from chunkd.replica import locks
from chunkd.replica.bucket import Bucket
from chunkd.replica.layout import manifest_key
from chunkd.replica.locks import UPLOAD, LockLost, ReplicaLock, read_epoch
from chunkd.replica.prune import prune_replica
from chunkd.replica.upload import PresentCache, RateLimiter, upload_round
from chunkd.store import ChunkStore

from .conftest import ingest_rounds
from .test_prune import restore_bytes, upload

STALE_S = 2.0
REFRESH_S = 0.5


@pytest.fixture
def quick_locks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lock times scaled from 30 min / 5 min down to seconds."""
    monkeypatch.setattr(locks, "LOCK_STALE_S", STALE_S)
    monkeypatch.setattr(locks, "LOCK_REFRESH_S", REFRESH_S)


@pytest.mark.scale  # a throttled upload outliving a lock period: `make integration`
def test_a_throttled_upload_keeps_its_lock_live(
    bucket: Bucket, tmp_path: Path, quick_locks: None
) -> None:
    """hostC's round 1 was removed, so its chunks are garbage older than the grace period; hostA's
    round 2 shares all but one of them. hostA uploads round 2 at a rate that makes its one new
    chunk wait ~5 s (2.5 stale times) before its PUT; meanwhile hostB's prune must see hostA's
    lock live. Before: the lock was last written before the chunk was submitted, the prune ran,
    swept the shared chunks, and hostA's manifest then named chunks that were gone."""
    with ingest_rounds(tmp_path / "c.db", tmp_path / "c", range(1, 2)) as c:
        upload(bucket, c, "hostC", "3", PresentCache())
    bucket.delete([manifest_key(bucket.url, "hostC", "3", 1)])
    time.sleep(1.1)  # LastModified has one-second resolution: grace 0 needs a second
    a = ingest_rounds(tmp_path / "a.db", tmp_path / "a", range(1, 3))
    with a:
        (new,) = {r.chunk_hash for r in a.read_round(2)[2]} - {
            r.chunk_hash for r in a.read_round(1)[2]
        }
        rate = len(a.read_chunk(new).data) // 6  # one second's burst, then ~5 s of waiting
        expected = a.get_round(2).file_size
    failures: list[BaseException] = []

    def upload_throttled() -> None:
        try:
            with (
                ChunkStore.open_reader(tmp_path / "a.db") as store,
                ReplicaLock(bucket, UPLOAD, "hostA") as lock,
                ThreadPoolExecutor(4) as workers,
            ):
                cache = PresentCache()  # as the stage: the epoch read under the lock
                cache.check_epoch(read_epoch(bucket))
                upload_round(
                    bucket,
                    store,
                    host="hostA",
                    client_id="1",
                    round_num=2,
                    cache=cache,
                    limiter=RateLimiter(rate),
                    workers=workers,
                    keepalive=lock.refresh,
                )
        except BaseException as e:  # handed to the test's thread
            failures.append(e)

    uploader = threading.Thread(target=upload_throttled)
    started = time.monotonic()
    uploader.start()
    time.sleep(STALE_S + 1.5)  # stale by then unless rewritten (one-second LastModified)
    assert uploader.is_alive(), "the upload was not throttled long enough to test anything"
    with pytest.raises(BusyError, match="upload-hostA"):
        prune_replica(bucket, host="hostB", keep_rounds=lambda c: 0, grace_s=0)
    uploader.join(60)
    assert not failures, failures
    assert time.monotonic() - started > STALE_S + 1.5
    assert len(restore_bytes(bucket, "hostA", "1", 2)) == expected
    prune_replica(bucket, host="hostB", keep_rounds=lambda c: 0, grace_s=0)  # free again
    assert len(restore_bytes(bucket, "hostA", "1", 2)) == expected


def test_a_holder_whose_lock_may_have_gone_stale_stops(bucket: Bucket, quick_locks: None) -> None:
    """A holder that could not rewrite its lock (paused, suspended, or its heartbeat failing)
    for most of the stale time cannot know that no sweep ran: refresh() says so. Before, it
    rewrote the lock and went on to write a manifest naming chunks a sweep may have removed."""
    lock = ReplicaLock(bucket, UPLOAD, "hostA").acquire()  # no heartbeat: as if paused
    lock.refresh()
    time.sleep(locks.lost_after_s() + 0.2)
    with pytest.raises(LockLost, match="was not rewritten for"):
        lock.refresh()
    lock.release()


def test_a_released_lock_is_not_written_again_by_its_heartbeat(
    bucket: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(locks, "LOCK_REFRESH_S", 0.05)
    with ReplicaLock(bucket, UPLOAD, "hostA") as lock:
        time.sleep(0.3)  # a few beats
        lock.refresh()
    time.sleep(0.3)
    assert not list(bucket.list(bucket.url.key("locks") + "/"))
