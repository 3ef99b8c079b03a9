"""Issue 19: no size the bucket states is trusted. Every GET is capped (by Content-Length before
reading, and while reading when the server does not say), and every size a manifest or a chunk
object's metadata states is checked before anything is allocated for it."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import zstandard

from chunkd.errors import EXIT_STATUS_BY_CODE, IntegrityError
from chunkd.replica.bounds import stored_limit
from chunkd.replica.bucket import Bucket, ObjectTooLarge
from chunkd.replica.fetch import read_manifest
from chunkd.replica.layout import (
    META_RAW_SIZE,
    ChunkForm,
    ReplicaURL,
    RoundManifest,
    chunk_key,
    manifest_key,
)

from .conftest import WeedServer, ingest_rounds
from .test_cli import chunkd
from .test_upload_restore import restored, upload_all

ABSURD = 2**40
MiB = 1 << 20


def uploaded(bucket: Bucket, tmp_path: Path) -> RoundManifest:
    with ingest_rounds(tmp_path / "c.db", tmp_path / "c", range(1, 2)) as store:
        upload_all(bucket, store, "h", "1")
    return read_manifest(bucket, "h", "1", 1)


def rewrite_manifest(bucket: Bucket, edit: dict[str, object]) -> None:
    key = manifest_key(bucket.url, "h", "1", 1)
    doc = json.loads(bucket.get(key, limit=MiB)[0])
    edit(doc)  # type: ignore[operator]
    bucket.put(key, json.dumps(doc).encode(), content_type="application/json")


def test_a_get_is_refused_unread_over_its_cap(bucket: Bucket) -> None:
    bucket.put("blob", bytes(100_000))
    assert bucket.get("blob", limit=100_000)[0] == bytes(100_000)
    with pytest.raises(ObjectTooLarge, match=r"blob is 100000 bytes, over its cap of 99999"):
        bucket.get("blob", limit=99_999)
    with pytest.raises(ObjectTooLarge):
        next(bucket.stream("blob", limit=99_999))


class _EndlessChunked(BaseHTTPRequestHandler):
    """An "S3 server" that answers every GET with a chunked body and no Content-Length: 64 MiB
    of it, or until the client hangs up. ``sent`` counts what left."""

    protocol_version = "HTTP/1.1"
    sent = 0

    def do_GET(self) -> None:  # http.server calls it by this name
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        piece = b"x" * (64 << 10)
        try:
            for _ in range(1024):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                type(self).sent += len(piece)
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass  # the client hung up: what we want

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def unannounced(s3_env: None) -> Iterator[Bucket]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EndlessChunked)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Bucket(
            ReplicaURL("lying-bucket", ""), endpoint=f"http://127.0.0.1:{server.server_port}"
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_body_without_a_length_is_cut_at_the_cap(unannounced: Bucket) -> None:
    """Before: ``get`` read all 64 MiB the server sent (or would have, for ever)."""
    with pytest.raises(ObjectTooLarge, match=r"more than 1048576 bytes \(unannounced\)"):
        unannounced.get("chunks/ab/x", limit=MiB)
    assert _EndlessChunked.sent < 16 * MiB  # what socket buffers hold; not the 64 MiB


def test_restore_refuses_a_manifest_naming_a_chunk_of_absurd_size(
    bucket: Bucket, s3_server: WeedServer, tmp_path: Path
) -> None:
    """The manifest and the chunk object's metadata both say 2**40 raw bytes, and the object is
    a zstd frame that does not state its size: before, decoding asked for a 1 TiB buffer
    (MemoryError, or the whole machine's memory where the kernel overcommits)."""
    m = uploaded(bucket, tmp_path)
    victim = m.chunks[0].chunk_hash

    def absurd(doc: dict[str, list[dict[str, object]]]) -> None:
        doc["chunks"][0]["raw_size"] = ABSURD
        doc["chunks"][0]["codec"] = "bgz4"

    rewrite_manifest(bucket, absurd)  # type: ignore[arg-type]
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(b"x" * 100)
    form = ChunkForm(victim, "bgz4", ABSURD, None)
    bucket.put(chunk_key(bucket.url, victim), frame, metadata=form.metadata())
    out = tmp_path / "r1.pth"
    done = chunkd(
        "restore", "--replica", str(bucket.url), "--endpoint", s3_server.endpoint,
        "--host", "h", "--client", "1", "--round", "1", "-o", str(out),
    )  # fmt: skip
    assert done.returncode == EXIT_STATUS_BY_CODE["integrity"], done.stderr
    assert f"chunk {victim}: raw size {ABSURD} is outside 0..{1 << 30}".encode() in done.stderr
    assert not out.exists()


def test_a_chunk_object_stating_an_absurd_size_is_refused(bucket: Bucket, tmp_path: Path) -> None:
    """The manifest is right; the object's metadata (what decoding allocates by) says 2**40."""
    m = uploaded(bucket, tmp_path)
    victim = m.chunks[0]
    key = chunk_key(bucket.url, victim.chunk_hash)
    data, meta = bucket.get(key, limit=MiB)
    bucket.put(key, data, metadata={**meta, META_RAW_SIZE: str(ABSURD)})
    with pytest.raises(IntegrityError, match=f"raw size {ABSURD} is outside"):
        restored(bucket, "h", "1", 1)


def test_a_chunk_object_larger_than_its_raw_size_allows_is_refused_unread(
    bucket: Bucket, tmp_path: Path
) -> None:
    m = uploaded(bucket, tmp_path)
    victim = m.chunks[0]
    key = chunk_key(bucket.url, victim.chunk_hash)
    meta = bucket.get(key, limit=MiB)[1]
    cap = stored_limit(victim.form.raw_size)
    bucket.put(key, bytes(cap + 1), metadata=meta)
    with pytest.raises(ObjectTooLarge, match=f"{key} is {cap + 1} bytes, over its cap of {cap}"):
        restored(bucket, "h", "1", 1)


def test_a_residue_declaring_more_than_ingest_keeps_is_refused(
    bucket: Bucket, tmp_path: Path
) -> None:
    """A zstd frame header stating 2**40 bytes: before, the decompressor allocated what the
    frame stated (its max_output_size does not apply then): MemoryError."""
    uploaded(bucket, tmp_path)
    header = b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + ABSURD.to_bytes(8, "little") + bytes([1, 0, 0])

    def absurd(doc: dict[str, dict[str, str]]) -> None:
        doc["residue"]["data"] = base64.b64encode(header).decode()

    rewrite_manifest(bucket, absurd)  # type: ignore[arg-type]
    with pytest.raises(IntegrityError, match="residue declares more than 134217728 bytes"):
        restored(bucket, "h", "1", 1)
