"""Replica retention and the shared chunk sweep: only what no kept round needs goes, and never
while another host uploads."""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from chunkd.errors import BusyError
from chunkd.replica import locks as locks_module
from chunkd.replica.bucket import Bucket
from chunkd.replica.fetch import list_rounds, read_manifest, restore_from_replica
from chunkd.replica.layout import chunks_prefix, hash_of_chunk_key
from chunkd.replica.locks import PRUNE, UPLOAD, ReplicaLock, read_epoch
from chunkd.replica.prune import prune_replica
from chunkd.replica.upload import PresentCache, RateLimiter, upload_round
from chunkd.store import ChunkStore

from .conftest import ingest_rounds


def upload(bucket: Bucket, store: ChunkStore, host: str, client: str, cache: PresentCache) -> None:
    """As the daemon's stage does it: under an upload lock, after checking the gc-epoch."""
    with ReplicaLock(bucket, UPLOAD, host) as lock, ThreadPoolExecutor(4) as workers:
        cache.check_epoch(read_epoch(bucket))
        for r in store.round_numbers():
            upload_round(
                bucket,
                store,
                host=host,
                client_id=client,
                round_num=r,
                cache=cache,
                limiter=RateLimiter(0),
                workers=workers,
                keepalive=lock.refresh,
            )


def chunk_hashes(bucket: Bucket) -> set[str]:
    return {
        h
        for o in bucket.list(chunks_prefix(bucket.url))
        if (h := hash_of_chunk_key(bucket.url, o.key))
    }


def referenced(bucket: Bucket) -> set[str]:
    return set().union(
        *(
            read_manifest(bucket, e.host, e.client_id, e.round_num).referenced_hashes()
            for e in list_rounds(bucket)
        )
    )


def restore_bytes(bucket: Bucket, host: str, client: str, round_num: int) -> bytes:
    out = io.BytesIO()
    restore_from_replica(bucket, host, client, round_num, out.write)
    return out.getvalue()


def test_retention_removes_only_what_no_kept_round_needs(bucket: Bucket, tmp_path: Path) -> None:
    """Reverse delta chains: rounds 1-7 are stored as deltas down from round 8's key chunks, and
    of rounds 1-8 keeping 7 and 8, round 7's deltas need round 8's chunks while the chunks of
    rounds 1-6 (leaves) go."""
    a = ingest_rounds(tmp_path / "a.db", tmp_path / "a", range(1, 9), delta=True)
    # host B shares A's backbone, not its heads: a chunk B shares would pin the bucket's form
    # of it, which may be a delta on A's newer rounds (forms are shared across hosts)
    b = ingest_rounds(tmp_path / "b.db", tmp_path / "b", range(101, 103))
    with a, b:
        upload(bucket, a, "hostA", "1", PresentCache())
        upload(bucket, b, "hostB", "2", PresentCache())
    before = chunk_hashes(bucket)
    time.sleep(1.1)  # LastModified has one-second resolution: a chunk of this second is in grace
    dry = prune_replica(bucket, host="hostA", keep_rounds=lambda c: 2, grace_s=0, dry_run=True)
    assert dry.rounds_removed == {"1": [1, 2, 3, 4, 5, 6]} and dry.chunks_removed > 0
    assert chunk_hashes(bucket) == before  # a dry run changes nothing
    assert [e.round_num for e in list_rounds(bucket, host="hostA")] == list(range(1, 9))

    result = prune_replica(bucket, host="hostA", keep_rounds=lambda c: 2, grace_s=0)
    assert result.rounds_removed == {"1": [1, 2, 3, 4, 5, 6]}
    assert result.chunks_removed == dry.chunks_removed > 0
    assert [e.round_num for e in list_rounds(bucket, host="hostA")] == [7, 8]
    assert [e.round_num for e in list_rounds(bucket, host="hostB")] == [101, 102]  # not ours
    after = chunk_hashes(bucket)
    assert after == referenced(bucket)  # everything needed stays, nothing else
    assert before - after
    with (
        ChunkStore.open_reader(tmp_path / "a.db") as a_store,
        ChunkStore.open_reader(tmp_path / "b.db") as b_store,
    ):
        for host, client, store, rounds in (
            ("hostA", "1", a_store, (7, 8)),
            ("hostB", "2", b_store, (101, 102)),
        ):
            for r in rounds:
                data = restore_bytes(bucket, host, client, r)
                assert len(data) == store.get_round(r).file_size


def test_unreferenced_chunks_younger_than_the_grace_period_stay(
    bucket: Bucket, tmp_path: Path
) -> None:
    with ingest_rounds(tmp_path / "a.db", tmp_path / "a", range(1, 4)) as a:
        upload(bucket, a, "h", "1", PresentCache())
    before = chunk_hashes(bucket)
    result = prune_replica(bucket, host="h", keep_rounds=lambda c: 1, grace_s=3600)
    assert result.rounds_removed == {"1": [1, 2]}
    assert result.chunks_removed == 0 and result.chunks_in_grace > 0
    assert chunk_hashes(bucket) == before


def test_prune_waits_for_a_live_upload_and_uploads_wait_for_a_prune(bucket: Bucket) -> None:
    with ReplicaLock(bucket, UPLOAD, "hostB"):
        with pytest.raises(BusyError):
            prune_replica(bucket, host="hostA", keep_rounds=lambda c: 1, grace_s=0)
        with ReplicaLock(bucket, UPLOAD, "hostC"):  # uploaders share
            pass
    with ReplicaLock(bucket, PRUNE, "hostA"), pytest.raises(BusyError):
        ReplicaLock(bucket, UPLOAD, "hostB").acquire()
    assert not list(bucket.list(bucket.url.key("locks") + "/"))  # the refused left nothing
    prune_replica(bucket, host="hostA", keep_rounds=lambda c: 1, grace_s=0)  # free again


def test_a_crashed_hosts_lock_goes_stale(bucket: Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    ReplicaLock(bucket, UPLOAD, "crashed").acquire()  # never released
    with pytest.raises(BusyError):
        prune_replica(bucket, host="h", keep_rounds=lambda c: 1, grace_s=0)
    monkeypatch.setattr(locks_module, "LOCK_STALE_S", 1.0)
    monkeypatch.setattr(locks_module, "LOCK_REFRESH_S", 0.2)  # the prune's heartbeat keeps up
    time.sleep(2.2)  # LastModified has one-second resolution
    prune_replica(bucket, host="h", keep_rounds=lambda c: 1, grace_s=0)


def test_an_uploader_forgets_swept_chunks(bucket: Bucket, tmp_path: Path) -> None:
    """A chunk the uploader believes present may have been swept: the gc-epoch tells it so."""
    cache = PresentCache()
    with ingest_rounds(tmp_path / "a.db", tmp_path / "a", range(1, 2)) as a:
        upload(bucket, a, "h", "1", cache)
    bucket.delete([bucket.url.key("hosts", "h", "clients", "1", "rounds", "1")])
    time.sleep(1.1)
    swept = prune_replica(bucket, host="h", keep_rounds=lambda c: 0, grace_s=0)
    assert swept.chunks_removed > 0 and not chunk_hashes(bucket)
    with ingest_rounds(tmp_path / "b.db", tmp_path / "b", range(2, 3)) as b:
        upload(bucket, b, "h", "1", cache)  # same backbone chunks: must be uploaded again
        expected = b.get_round(2).file_size
    assert len(restore_bytes(bucket, "h", "1", 2)) == expected


def test_the_mark_cache_follows_the_manifests(bucket: Bucket, tmp_path: Path) -> None:
    cache: dict[str, tuple[str, frozenset[str]]] = {}
    with ingest_rounds(tmp_path / "a.db", tmp_path / "a", range(1, 4)) as a:
        upload(bucket, a, "h", "1", PresentCache())
        sizes = {r: a.get_round(r).file_size for r in (2, 3)}
    prune_replica(bucket, host="h", keep_rounds=lambda c: 0, grace_s=0, mark_cache=cache)
    keys = {bucket.url.key("hosts", "h", "clients", "1", "rounds", str(r)) for r in (1, 2, 3)}
    assert set(cache) == keys
    time.sleep(1.1)
    again = prune_replica(bucket, host="h", keep_rounds=lambda c: 2, grace_s=0, mark_cache=cache)
    assert again.rounds_removed == {"1": [1]} and again.chunks_removed > 0
    assert set(cache) == keys - {bucket.url.key("hosts", "h", "clients", "1", "rounds", "1")}
    assert chunk_hashes(bucket) == referenced(bucket)
    for r, size in sizes.items():
        assert len(restore_bytes(bucket, "h", "1", r)) == size


def test_a_killed_daemons_prune_lock_is_released_by_its_successor(bucket):
    """Issue 17 (lifecycle campaign, seed 1702): a daemon SIGKILLed mid-prune left its lock, and
    the restarted daemon's uploads waited 30 minutes for it to go stale (lag never reached 0).
    The successor removes its host's locks whose process is gone; a live process's lock, and a
    lock written on another machine under the same host name, stay."""
    import json
    import subprocess
    import sys

    from chunkd.replica.locks import release_dead_locks

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead_pid = int(gone.stdout)
    dead = ReplicaLock(bucket, PRUNE, "hostA")
    dead._body = json.dumps({**json.loads(dead._body), "pid": dead_pid}).encode()
    dead._write()
    live = ReplicaLock(bucket, UPLOAD, "hostA")  # this process: alive
    live._write()
    elsewhere = ReplicaLock(bucket, PRUNE, "hostA")
    elsewhere._body = json.dumps(
        {**json.loads(elsewhere._body), "pid": dead_pid, "machine": "another-machine"}
    ).encode()
    elsewhere._write()
    other_host = ReplicaLock(bucket, PRUNE, "hostB")
    other_host._body = json.dumps({**json.loads(other_host._body), "pid": dead_pid}).encode()
    other_host._write()
    with pytest.raises(BusyError):
        ReplicaLock(bucket, UPLOAD, "hostA").acquire()

    assert release_dead_locks(bucket, "hostA") == [dead.key]
    keys = {o.key for o in bucket.list(bucket.url.key("locks") + "/")}
    assert keys == {live.key, elsewhere.key, other_host.key}
