"""Issue 19: objects under another host's manifest keys that no chunkd can read (256 MiB, not
JSON, nested past the parser) neither bloat nor stop the chunk sweep, and every other host's
garbage is still collected; a chunk such an object names is kept (docs/REPLICA.md,
"Unreadable manifests")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chunkd.replica.bucket import Bucket, ObjectTooLarge
from chunkd.replica.fetch import list_rounds, read_manifest
from chunkd.replica.layout import ReplicaURL, manifest_key
from chunkd.replica.quarantine import named_hashes
from chunkd.replica.upload import PresentCache
from chunkd.store import ChunkStore

from .conftest import WeedServer, ingest_rounds
from .test_prune import chunk_hashes, referenced, restore_bytes, upload

#: The sweep, in a process of its own so that its peak RSS (VmHWM) is its own.
SWEEP = """
import json, sys
from chunkd.replica.bucket import Bucket
from chunkd.replica.layout import ReplicaURL
from chunkd.replica.prune import prune_replica
bucket = Bucket(ReplicaURL(sys.argv[1], sys.argv[2]), endpoint=sys.argv[3])
try:
    out = prune_replica(bucket, host="hostA", keep_rounds=lambda c: 1, grace_s=0).log_fields()
except Exception as e:
    out = {"error": f"{type(e).__name__}: {e}"}
with open("/proc/self/status") as f:
    out["vm_hwm_kib"] = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
print(json.dumps(out))
"""
MiB = 1 << 20


def sweep_in_a_process(bucket: Bucket, endpoint: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", SWEEP, bucket.url.bucket, bucket.url.prefix, endpoint],
        capture_output=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        check=True,
    )
    return json.loads(done.stdout)


def garbage_of_two_hosts(bucket: Bucket, tmp_path: Path) -> set[str]:
    """hostA: rounds 1-3 (the sweep keeps 1: rounds 1 and 2 are its garbage); hostB: rounds
    101-103, of which it has removed 101 and 102 (their chunks are hostB's garbage). Returns the
    chunks that nothing references."""
    with (
        ingest_rounds(tmp_path / "a.db", tmp_path / "a", range(1, 4)) as a,
        ingest_rounds(tmp_path / "b.db", tmp_path / "b", range(101, 104), backbone_seed=1) as b,
    ):
        upload(bucket, a, "hostA", "1", PresentCache())
        upload(bucket, b, "hostB", "2", PresentCache())
    bucket.delete([manifest_key(bucket.url, "hostB", "2", r) for r in (101, 102)])
    b_garbage = chunk_hashes(bucket) - referenced(bucket)
    assert b_garbage
    return b_garbage


@pytest.mark.scale  # a 256 MiB object on a real S3 server: `make integration`
def test_unreadable_manifests_neither_bloat_nor_stop_the_sweep(
    bucket: Bucket, s3_server: WeedServer, tmp_path: Path
) -> None:
    """Before: the 256 MiB object was read whole (and decoded to a str for JSON), the sweep
    failed on it, and nothing was collected for any host until someone deleted it."""
    url = ReplicaURL(bucket.url.bucket, bucket.url.prefix + "-clean")
    clean = Bucket(url, endpoint=s3_server.endpoint)
    garbage_of_two_hosts(clean, tmp_path / "clean")
    b_garbage = garbage_of_two_hosts(bucket, tmp_path / "bad")
    spelled = sorted(b_garbage)[0]  # a garbage chunk that one unreadable object names
    huge = manifest_key(bucket.url, "hostC", "9", 1)
    bad = {
        huge: bytes(256 * MiB),
        manifest_key(bucket.url, "hostC", "9", 2): (
            b'{"format":"chunkd-replica-round","version":1,"chunks":[{"hash":"'
            + spelled.upper().encode()  # one flipped bit (0x20) per letter: still protected
        ),
        manifest_key(bucket.url, "hostC", "9", 3): b"[" * 100_000 + b"]" * 100_000,
    }
    for key, body in bad.items():
        bucket.put(key, body, content_type="application/json")
    del bad
    try:
        time.sleep(1.1)  # LastModified has one-second resolution: grace 0 needs a second
        baseline = sweep_in_a_process(clean, s3_server.endpoint)
        swept = sweep_in_a_process(bucket, s3_server.endpoint)

        assert "error" not in swept, swept["error"]
        assert swept["manifests_quarantined"] == 3
        assert {q["key"]: q["host"] for q in swept["quarantined"]} == {  # type: ignore[union-attr]
            manifest_key(bucket.url, "hostC", "9", r): "hostC" for r in (1, 2, 3)
        }
        assert swept["chunks_quarantined"] == 1
        assert swept["rounds_removed"] == baseline["rounds_removed"] == {"1": [1, 2]}
        assert swept["chunks_removed"] == baseline["chunks_removed"] - 1
        # every host's garbage went, but the chunk an unreadable object spells
        assert chunk_hashes(bucket) == referenced_by_readable(bucket) | {spelled}
        assert chunk_hashes(clean) == referenced(clean)
        base_kib, bad_kib = (int(str(d["vm_hwm_kib"])) for d in (baseline, swept))
        print(
            f"sweep peak RSS: {base_kib / 1024:.1f} MiB, with the bad objects {bad_kib / 1024:.1f}"
        )
        assert bad_kib - base_kib < 50 * 1024, (baseline, swept)

        with pytest.raises(ObjectTooLarge, match=r"268435456 bytes, over its cap of 67108864"):
            read_manifest(bucket, "hostC", "9", 1)  # a restore refuses it unread too
        with ChunkStore.open_reader(tmp_path / "bad" / "b.db") as b:
            assert len(restore_bytes(bucket, "hostB", "2", 103)) == b.get_round(103).file_size
    finally:
        bucket.delete([huge])


def referenced_by_readable(bucket: Bucket) -> set[str]:
    return set().union(
        *(
            read_manifest(bucket, e.host, e.client_id, e.round_num).referenced_hashes()
            for e in list_rounds(bucket)
            if e.host != "hostC"
        )
    )


def test_the_scan_finds_hashes_anywhere_an_object_spells_them() -> None:
    a, b, c, d = ("a" * 63 + "1", "b" * 63 + "2", "c" * 63 + "3", "d" * 63 + "4")
    body = (
        b'{"hash":"' + a.encode() + b'"}'  # as a manifest spells it
        + b"\x00" * 100 + b.upper().encode()  # a flipped case bit
        + b"f" + c.encode() + b"0"  # inside a longer run of hex digits
    )  # fmt: skip
    pieces = [body[i : i + 7] for i in range(0, len(body), 7)]  # every hash crosses pieces
    assert named_hashes(pieces, {a, b, c, d}) == {a, b, c}
    assert named_hashes([body], {c}) == {c}  # fewer candidates than windows: searched for
    assert named_hashes([b"x" * 1000], {a}) == set()
