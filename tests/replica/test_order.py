"""The replica's "newest" is the store's one order, (run, round number): a rerun's rounds reach
the bucket, are kept there, and ``lag_rounds`` says so only once they have arrived.

The scenario of issue 17 finding 2: run A writes rounds 1-6, then a rerun rewrites rounds 2 and
3 (same files, new content: a new run). With ``replica_keep_rounds = 3`` the newest three by the
order are run A's round 6 and the rerun's 2 and 3 (any later run beats any round number of an
earlier one), so that is what the bucket must end with.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from chunkd.config import ReplicaConfig
from chunkd.daemon.replication import ReplicaStage
from chunkd.errors import BusyError
from chunkd.ingest import IngestOptions, ingest_file
from chunkd.replica.bucket import Bucket
from chunkd.replica.fetch import latest_round, list_rounds, read_manifest, restore_from_replica
from chunkd.replica.locks import PRUNE, ReplicaLock
from chunkd.replica.prune import prune_replica
from chunkd.store import ChunkStore

from .conftest import WeedServer, ingest_rounds, save_checkpoint
from .test_prune import upload
from .test_stage import wait_for
from .test_upload_restore import upload_all

#: The newest three of run A (rounds 1-6) and a rerun of rounds 2-3, by (run, round number).
KEPT = [2, 3, 6]


def rerun(db: Path, directory: Path, rounds: range) -> dict[int, bytes]:
    """Rewrite ``rounds`` from the same files with new content (a rerun); their bytes."""
    written = {}
    with ChunkStore.open_writer(db) as store:
        before = max(v.run for v in store.list_rounds())
        for r in rounds:
            path = save_checkpoint(directory / f"model_round_{r}.pth", 9000 + r)
            written[r] = path.read_bytes()
            ingest_file(path, store, IngestOptions(chunk_num=8), round_num=r)
        versions = {v.round_num: v for v in store.list_rounds()}
    assert all(versions[r].run > before for r in rounds)  # the rerun is a new run
    return written


@contextlib.contextmanager
def held_prune_lock(bucket: Bucket, host: str) -> Iterator[None]:
    """A prune lock of ``host``, taken once the stage's own frequent prune is not holding one."""
    lock = ReplicaLock(bucket, PRUNE, host)
    deadline = time.monotonic() + 30
    while True:
        try:
            lock.acquire()
            break
        except BusyError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    try:
        yield
    finally:
        lock.release()


def chunkd(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "chunkd.cli.main", *args], capture_output=True, timeout=120
    )


def test_a_rerun_reaches_the_replica_and_lag_counts_it_until_then(
    bucket: Bucket, s3_server: WeedServer, tmp_path: Path
) -> None:
    db = tmp_path / "client_1_chunks.db"
    ingest_rounds(db, tmp_path / "c", range(1, 7)).close()  # run A
    config = ReplicaConfig(
        url=str(bucket.url),
        endpoint=s3_server.endpoint,
        region="",
        host="hostA",
        replica_keep_rounds=3,
        max_upload_rate=0,
        prune_interval_s=0.2,
        gc_grace_s=3600.0,
    )
    stage = ReplicaStage(config, chunk_keep_rounds=0, clients=lambda: {"1": db}, backoff_max_s=0.5)
    stage.start()
    try:
        wait_for(lambda: stage.status()["uploaded_rounds"] == 3, 60, "run A's 4, 5, 6 uploaded")
        assert stage.status()["lag_rounds"] == 0
        # another host's prune holds the bucket: the stage sees what it lacks but cannot send it
        with held_prune_lock(bucket, "hostB"):
            written = rerun(db, tmp_path / "c", range(2, 4))
            stage.round_committed("1", 3)
            wait_for(lambda: stage.status()["lag_rounds"] == 2, 30, "lag of the rerun's 2 rounds")
            assert stage.status()["uploaded_rounds"] == 3
        wait_for(lambda: stage.status()["lag_rounds"] == 0, 60, "the rerun uploaded")
        assert stage.status()["uploaded_rounds"] == 5
        wait_for(
            lambda: [e.round_num for e in list_rounds(bucket)] == KEPT, 30, "retention by order"
        )
        stage.round_committed("1", 3)  # a fresh comparison finds nothing missing
        wait_for(lambda: stage.status()["last_prune"] is not None, 30, "a prune")
        assert stage.status()["lag_rounds"] == 0 and stage.status()["uploaded_rounds"] == 5
    finally:
        stage.stop()
    for r in (2, 3):
        manifest = read_manifest(bucket, "hostA", "1", r)
        assert manifest.file_sha256 == hashlib.sha256(written[r]).hexdigest()
        assert manifest.run > read_manifest(bucket, "hostA", "1", 6).run
    where = ("--replica", str(bucket.url), "--endpoint", s3_server.endpoint, "--host", "hostA")
    out = tmp_path / "r2.pth"
    done = chunkd("restore", *where, "--client", "1", "--round", "2", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == written[2]
    latest = chunkd("restore", *where, "--client", "1", "-o", "-")  # latest: the newest written
    assert latest.returncode == 0, latest.stderr
    assert latest.stdout == written[3]
    listed = chunkd("list", *where, "--json")
    assert json.loads(listed.stdout)["clients"][0]["latest_round"] == 3


def test_replica_retention_keeps_the_newest_by_run_then_round(
    bucket: Bucket, tmp_path: Path
) -> None:
    db = tmp_path / "c.db"
    with ingest_rounds(db, tmp_path / "c", range(1, 7)) as store:
        upload_all(bucket, store, "hostA", "1")
    written = rerun(db, tmp_path / "c", range(2, 4))
    with ChunkStore.open_reader(db) as store:
        from chunkd.replica.upload import PresentCache

        upload(bucket, store, "hostA", "1", PresentCache())  # every local round, rerun included
    assert latest_round(bucket, "hostA", "1") == 3
    result = prune_replica(bucket, host="hostA", keep_rounds=lambda c: 3, grace_s=3600)
    assert result.rounds_removed == {"1": [1, 4, 5]}
    assert [e.round_num for e in list_rounds(bucket)] == KEPT
    out = io.BytesIO()
    restore_from_replica(bucket, "hostA", "1", 2, out.write)
    assert out.getvalue() == written[2]


def test_the_same_bytes_in_a_newer_run_are_sent_again(
    bucket: Bucket, s3_server: WeedServer, tmp_path: Path
) -> None:
    """Round 2 is rewritten, then rewritten back to its first bytes while the bucket still holds
    the first version: equal SHA-256, but the bucket's run 0 would sort it as old, so replica
    retention would retire a round that is locally among the newest."""
    db = tmp_path / "client_1_chunks.db"
    with ingest_rounds(db, tmp_path / "c", range(1, 4)) as store:
        upload_all(bucket, store, "hostA", "1")
        first = store.get_round(2)
    rerun(db, tmp_path / "c", range(2, 3))
    with ChunkStore.open_writer(db) as store:
        path = save_checkpoint(tmp_path / "c" / "model_round_2.pth", 1002)  # the first bytes
        ingest_file(path, store, IngestOptions(chunk_num=8), round_num=2)
        again = store.get_round(2)
    assert again.file_sha256 == first.file_sha256 and again.run > first.run
    config = ReplicaConfig(str(bucket.url), s3_server.endpoint, "", "hostA", 0, 0, 3600.0, 3600.0)
    stage = ReplicaStage(config, chunk_keep_rounds=0, clients=lambda: {"1": db}, backoff_max_s=0.5)
    stage.start()
    try:
        wait_for(lambda: stage.status()["uploaded_rounds"] == 1, 30, "round 2 sent again")
        assert stage.status()["lag_rounds"] == 0
    finally:
        stage.stop()
    held = read_manifest(bucket, "hostA", "1", 2)
    assert (held.run, held.generation) == (again.run, again.generation)
    assert latest_round(bucket, "hostA", "1") == 2
