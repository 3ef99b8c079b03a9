"""The daemon's upload stage against a real S3 server: resume, outage, write order."""

from __future__ import annotations

import contextlib
import io
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from chunkd.config import ReplicaConfig
from chunkd.daemon.replication import ReplicaStage
from chunkd.replica.bounds import MAX_MANIFEST_BYTES
from chunkd.replica.bucket import Bucket, ReplicaError
from chunkd.replica.fetch import list_rounds, restore_from_replica
from chunkd.replica.layout import ReplicaURL, RoundManifest, chunk_key
from chunkd.store import ChunkStore

from .conftest import WeedServer, ingest_rounds


def make_stage(
    url: str, endpoint: str, db: Path, *, rate: int = 0, host: str = "hostA"
) -> ReplicaStage:
    config = ReplicaConfig(
        url=url,
        endpoint=endpoint,
        region="",
        host=host,
        replica_keep_rounds=0,
        max_upload_rate=rate,
        prune_interval_s=3600.0,
        gc_grace_s=3600.0,
    )
    return ReplicaStage(config, chunk_keep_rounds=0, clients=lambda: {"1": db}, backoff_max_s=1.0)


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class ManifestWatcher(threading.Thread):
    """Polls the bucket: every manifest that becomes visible must find all its chunks there."""

    def __init__(self, bucket: Bucket) -> None:
        super().__init__(daemon=True)
        self.bucket = bucket
        self.checked: set[str] = set()
        self.violations: list[str] = []
        self.stop_event = threading.Event()

    def finish(self) -> None:
        self.stop_event.set()
        self.join()
        self._poll()  # whatever appeared since the last poll

    def run(self) -> None:
        while not self.stop_event.is_set():
            with contextlib.suppress(ReplicaError):  # the server may be down on purpose
                self._poll()
            time.sleep(0.05)

    def _poll(self) -> None:
        for entry in list_rounds(self.bucket):
            key = f"{entry.host}/{entry.client_id}/{entry.round_num}"
            if key in self.checked:
                continue
            data, _ = self.bucket.get(
                self.bucket.url.key(
                    "hosts", entry.host, "clients", entry.client_id, "rounds", str(entry.round_num)
                ),
                limit=MAX_MANIFEST_BYTES,
            )
            manifest = RoundManifest.from_json(data, where=key)
            for chunk_hash in manifest.referenced_hashes():
                if self.bucket.head(chunk_key(self.bucket.url, chunk_hash)) is None:
                    self.violations.append(f"{key} before chunk {chunk_hash}")
            self.checked.add(key)


def remote_matches_local(bucket: Bucket, db: Path) -> None:
    with ChunkStore.open_reader(db) as store:
        for info in store.list_rounds():
            out = io.BytesIO()
            result = restore_from_replica(bucket, "hostA", "1", info.round_num, out.write)
            assert result.file_sha256 == info.file_sha256


def test_stage_uploads_new_rounds_and_resumes_after_restart(
    bucket: Bucket, s3_server: WeedServer, tmp_path: Path
) -> None:
    db = tmp_path / "client_1_chunks.db"
    watcher = ManifestWatcher(bucket)
    watcher.start()
    ingest_rounds(db, tmp_path / "c", range(1, 4)).close()
    stage = make_stage(str(bucket.url), s3_server.endpoint, db)
    stage.start()
    try:
        wait_for(lambda: stage.status()["uploaded_rounds"] == 3, 60, "3 rounds uploaded")
        assert stage.status()["lag_rounds"] == 0
        store = ingest_rounds(db, tmp_path / "c", range(4, 5))  # as a lane would: then the hook
        store.close()
        stage.round_committed("1", 4)
        wait_for(lambda: stage.status()["uploaded_rounds"] == 4, 30, "round 4 uploaded")
    finally:
        stage.stop()
    ingest_rounds(db, tmp_path / "c", range(5, 7)).close()  # while the daemon is down
    restarted = make_stage(str(bucket.url), s3_server.endpoint, db)
    restarted.start()
    try:
        wait_for(lambda: restarted.status()["uploaded_rounds"] == 2, 60, "rounds 5, 6 uploaded")
        status = restarted.status()
        assert status["lag_rounds"] == 0 and status["last_error"] is None
    finally:
        restarted.stop()
        watcher.finish()
    assert [e.round_num for e in list_rounds(bucket)] == [1, 2, 3, 4, 5, 6]
    remote_matches_local(bucket, db)
    assert not watcher.violations
    assert len(watcher.checked) == 6


@pytest.mark.scale  # a real S3 server down for seconds: `make integration`
def test_s3_killed_mid_upload_loses_nothing_and_catches_up(
    start_weed: Callable[[], WeedServer], tmp_path: Path
) -> None:
    server = start_weed()
    bucket = Bucket(ReplicaURL("chunkd-outage", "fl"), endpoint=server.endpoint)
    bucket.create()
    db = tmp_path / "client_1_chunks.db"
    ingest_rounds(db, tmp_path / "c", range(1, 4), compression="none").close()
    with ChunkStore.open_reader(db) as store:
        local_before = [(r.round_num, r.file_sha256) for r in store.list_rounds()]
    watcher = ManifestWatcher(bucket)
    watcher.start()
    # ~300 kB for round 1 at 150 kB/s: the server dies while round 1's chunks are going up
    stage = make_stage(str(bucket.url), server.endpoint, db, rate=150_000)
    stage.start()
    try:
        wait_for(
            lambda: any(True for _ in bucket.list(bucket.url.key("chunks") + "/")),
            30,
            "the first chunk object",
        )
        server.kill()
        wait_for(lambda: stage.status()["last_error"] is not None, 60, "the failure reported")
        status = stage.status()
        assert status["lag_rounds"] == 3 and status["lag_bytes"] > 0
        assert status["uploaded_rounds"] == 0
        lag_s = status["lag_s"]
        assert isinstance(lag_s, float) and lag_s > 0  # behind since the first look
        wait_for(lambda: stage.status()["lag_s"] > lag_s, 10, "lag_s grows while S3 is down")
        # the local side is untouched and keeps working
        ingest_rounds(db, tmp_path / "c", range(4, 5), compression="none").close()
        stage.round_committed("1", 4)
        with ChunkStore.open_reader(db) as store:
            assert [(r.round_num, r.file_sha256) for r in store.list_rounds()][:3] == local_before
        server.start()  # same data directory and ports
        wait_for(lambda: stage.status()["uploaded_rounds"] == 4, 90, "the replica caught up")
        assert stage.status()["lag_rounds"] == 0 and stage.status()["lag_s"] == 0
        assert stage.status()["last_error"] is None
        # the lock of the upload the server died under is removed too (else every host's
        # prune would wait for it to go stale)
        locks = bucket.url.key("locks") + "/"
        wait_for(lambda: not list(bucket.list(locks)), 10, "no lock left behind")
    finally:
        stage.stop()
        watcher.finish()
    remote_matches_local(bucket, db)
    assert not watcher.violations


@pytest.mark.scale  # a real S3 server down for seconds: `make integration`
def test_a_full_s3_server_loses_nothing_and_the_replica_catches_up_once_it_has_room(
    start_weed: Callable[..., WeedServer], tmp_path: Path
) -> None:
    server = start_weed(volume_max=1, volume_mb=4)  # one 4 MB volume: full after a few MB
    bucket = Bucket(ReplicaURL("chunkd-full", "fl"), endpoint=server.endpoint)
    bucket.create()
    filler = 0
    with contextlib.suppress(ReplicaError):
        for filler in range(64):
            bucket.put(bucket.url.key("filler", str(filler)), bytes(1 << 20))
    assert filler < 63, "the server never filled up"
    db = tmp_path / "client_1_chunks.db"
    ingest_rounds(db, tmp_path / "c", range(1, 3), compression="none").close()
    stage = make_stage(str(bucket.url), server.endpoint, db)
    stage.start()
    try:
        wait_for(lambda: stage.status()["last_error"] is not None, 60, "the failure reported")
        assert stage.status()["uploaded_rounds"] == 0 and stage.status()["lag_rounds"] == 2
        assert not list_rounds(bucket)  # no manifest without its chunks
        server.kill()
        server.volume_max = 0  # the operator adds room
        server.start()
        wait_for(lambda: stage.status()["uploaded_rounds"] == 2, 90, "the replica caught up")
    finally:
        stage.stop()
    remote_matches_local(bucket, db)


@pytest.mark.scale  # a real S3 server down for seconds: `make integration`
def test_a_frozen_s3_server_holds_up_neither_ingest_nor_shutdown(
    start_weed: Callable[..., WeedServer], tmp_path: Path
) -> None:
    """SIGSTOP the server mid-upload: requests hang (slow, not refused)."""
    server = start_weed()
    bucket = Bucket(ReplicaURL("chunkd-frozen", "fl"), endpoint=server.endpoint)
    bucket.create()
    db = tmp_path / "client_1_chunks.db"
    ingest_rounds(db, tmp_path / "c", range(1, 3), compression="none").close()
    stage = make_stage(str(bucket.url), server.endpoint, db, rate=150_000)
    stage.start()
    assert server.proc is not None
    try:
        wait_for(
            lambda: any(True for _ in bucket.list(bucket.url.key("chunks") + "/")),
            30,
            "the first chunk object",
        )
        server.proc.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        ingest_rounds(db, tmp_path / "c", range(3, 4), compression="none").close()
        stage.round_committed("1", 3)
        assert time.monotonic() - started < 10  # ingest does not wait for the bucket
        started = time.monotonic()
        stage.stop()
        assert time.monotonic() - started < 7
    finally:
        server.proc.send_signal(signal.SIGCONT)
    restarted = make_stage(str(bucket.url), server.endpoint, db)
    restarted.start()
    try:
        wait_for(lambda: len(list_rounds(bucket)) == 3, 90, "the replica caught up")
        wait_for(lambda: restarted.status()["lag_rounds"] == 0, 10, "no lag")
    finally:
        restarted.stop()
    remote_matches_local(bucket, db)
