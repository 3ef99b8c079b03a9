"""Rounds go to a real S3 server and come back byte-identical from the bucket alone."""

from __future__ import annotations

import hashlib
import io
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from chunkd.errors import IntegrityError
from chunkd.replica.bucket import Bucket
from chunkd.replica.fetch import list_rounds, read_manifest, restore_from_replica
from chunkd.replica.layout import chunk_key, chunks_prefix
from chunkd.replica.upload import PresentCache, RateLimiter, UploadResult, upload_round
from chunkd.store import ChunkStore, StoredChunk

from .conftest import ingest_rounds


def upload_all(bucket: Bucket, store: ChunkStore, host: str, client: str) -> list[UploadResult]:
    with ThreadPoolExecutor(4) as workers:
        return [
            upload_round(
                bucket,
                store,
                host=host,
                client_id=client,
                round_num=r,
                cache=PresentCache(),
                limiter=RateLimiter(0),
                workers=workers,
            )
            for r in store.round_numbers()
        ]


def stored_chunks(store: ChunkStore) -> list[StoredChunk]:
    """Every chunk the rounds use, through the narrow reader API only."""
    hashes = {ref.chunk_hash for r in store.round_numbers() for ref in store.read_round(r)[2]}
    return [store.read_chunk(h) for h in sorted(hashes)]


def restored(bucket: Bucket, host: str, client: str, round_num: int | None) -> bytes:
    out = io.BytesIO()
    result = restore_from_replica(bucket, host, client, round_num, out.write)
    assert result.file_sha256 == hashlib.sha256(out.getvalue()).hexdigest()
    return out.getvalue()


def chunk_objects(bucket: Bucket) -> dict[str, int]:
    return {o.key: o.size for o in bucket.list(chunks_prefix(bucket.url))}


@pytest.mark.parametrize("delta", [False, True], ids=["self-contained", "delta"])
def test_rounds_restore_from_the_bucket_alone(bucket: Bucket, tmp_path: Path, delta: bool) -> None:
    client_dir = tmp_path / "client_1"
    db = tmp_path / "db" / "client_1_chunks.db"
    originals = {}
    with ingest_rounds(db, client_dir, range(1, 4), delta=delta) as store:
        for r in store.round_numbers():
            originals[r] = (client_dir / f"model_round_{r}.pth").read_bytes()
        if delta:  # the case the format must carry: chunks stored against a base
            assert any(c.base_hash for c in stored_chunks(store))
        results = upload_all(bucket, store, "hostA", "1")
    assert [r.round_num for r in results] == [1, 2, 3]
    shutil.rmtree(tmp_path / "db")  # the host's database is gone
    shutil.rmtree(client_dir)
    for r, data in originals.items():
        assert restored(bucket, "hostA", "1", r) == data
    assert restored(bucket, "hostA", "1", None) == originals[3]  # latest
    listed = list_rounds(bucket, host="hostA", client_id="1")
    assert [e.round_num for e in listed] == [1, 2, 3]


def test_delta_bases_are_uploaded_and_listed_in_the_manifest(
    bucket: Bucket, tmp_path: Path
) -> None:
    with ingest_rounds(tmp_path / "c.db", tmp_path / "c", range(1, 4), delta=True) as store:
        upload_all(bucket, store, "h", "1")
        deltas = {c.chunk_hash: c.base_hash for c in stored_chunks(store) if c.base_hash}
    present = chunk_objects(bucket)
    for base in deltas.values():
        assert chunk_key(bucket.url, base) in present
    for r in (1, 2):  # reverse chains: older rounds are deltas against newer ones
        m = read_manifest(bucket, "h", "1", r)
        needed = {c.form.base for c in m.chunks if c.form.base} - {c.chunk_hash for c in m.chunks}
        assert needed <= {b.chunk_hash for b in m.bases}
        assert needed, f"round {r} should need bases from later rounds"


def test_shared_backbone_is_uploaded_once_across_hosts(bucket: Bucket, tmp_path: Path) -> None:
    a = ingest_rounds(tmp_path / "a.db", tmp_path / "a", range(1, 3))
    b = ingest_rounds(tmp_path / "b.db", tmp_path / "b", range(5, 7))
    with a, b:
        first = upload_all(bucket, a, "hostA", "1")
        after_a = chunk_objects(bucket)
        second = upload_all(bucket, b, "hostB", "2")
    # hostA's first round carries the 256 KiB backbone (~240 kB compressed); later rounds, and
    # every round of hostB, upload only the chunks that hold the trained head (~33 kB each)
    assert first[0].bytes_uploaded > 200_000
    assert all(r.bytes_uploaded < 80_000 for r in first[1:] + second)
    new_keys = set(chunk_objects(bucket)) - set(after_a)
    assert len(new_keys) == sum(r.chunks_uploaded for r in second)


def test_a_corrupted_chunk_object_fails_the_restore(bucket: Bucket, tmp_path: Path) -> None:
    with ingest_rounds(tmp_path / "c.db", tmp_path / "c", range(1, 2), compression="none") as s:
        upload_all(bucket, s, "h", "1")
    m = read_manifest(bucket, "h", "1", 1)
    victim = m.chunks[-1]
    key = chunk_key(bucket.url, victim.chunk_hash)
    data, meta = bucket.get(key, limit=1 << 20)
    bucket.put(key, bytes([data[0] ^ 1]) + data[1:], metadata=meta)
    with pytest.raises(IntegrityError, match="SHA-256"):
        restored(bucket, "h", "1", 1)


def test_rate_limit_bounds_the_upload(bucket: Bucket, tmp_path: Path) -> None:
    import time

    with ingest_rounds(tmp_path / "c.db", tmp_path / "c", range(1, 2), compression="none") as s:
        started = time.monotonic()
        with ThreadPoolExecutor(4) as workers:
            result = upload_round(
                bucket,
                s,
                host="h",
                client_id="1",
                round_num=1,
                cache=PresentCache(),
                limiter=RateLimiter(100_000),
                workers=workers,
            )
        elapsed = time.monotonic() - started
    # a burst of one second's worth, then 100 kB/s for the rest (~270 kB in all)
    assert result.bytes_uploaded > 270_000
    assert elapsed >= (result.bytes_uploaded - 100_000) / 100_000 - 0.05
