"""Delta chains longer than one link restore from the bucket; a runaway chain is refused.

The engine stores one-link chains today; the replica format already allows any depth (each
chunk object names its base, resolved recursively up to MAX_CHAIN_DEPTH). These chunk objects
are written by hand, in the documented format, to pin that.
"""

from __future__ import annotations

import hashlib
import io
import os

import pytest
import zstandard

from chunkd.codec import xor_bytes
from chunkd.errors import IntegrityError
from chunkd.manifest import RoundLayout, StorageSlot
from chunkd.replica.bucket import Bucket
from chunkd.replica.fetch import restore_from_replica
from chunkd.replica.layout import (
    MAX_CHAIN_DEPTH,
    ChunkForm,
    ManifestChunk,
    RoundManifest,
    chunk_key,
    manifest_key,
)

CHUNK = 1024


def put_chain(bucket: Bucket, raws: list[bytes]) -> list[ChunkForm]:
    """raws[0] self-contained, raws[i] stored as XOR with raws[i-1]: a chain of len-1 links."""
    forms, previous = [], None
    for raw in raws:
        h = hashlib.sha256(raw).hexdigest()
        if previous is None:
            form, body = ChunkForm(h, "raw", len(raw), None), raw
        else:
            delta = xor_bytes(raw, previous[1])
            body = zstandard.ZstdCompressor().compress(delta)
            form = ChunkForm(h, "xbgz1", len(raw), previous[0])
        bucket.put(chunk_key(bucket.url, h), body, metadata=form.metadata())
        forms.append(form)
        previous = (h, raw)
    return forms


def put_round(bucket: Bucket, chunks: list[tuple[bytes, ChunkForm]], bases: list[ChunkForm]) -> str:
    """A one-storage file: 8 header bytes, the chunks' bytes, 8 trailer bytes."""
    payload = b"".join(raw for raw, _ in chunks)
    head, tail = b"HEADER!!", b"TRAILER!"
    content = head + payload + tail
    storage = StorageSlot("w", "0", "uint8", 1, len(payload), (len(payload),), len(head))
    layout = RoundLayout(
        len(content),
        hashlib.sha256(content).hexdigest(),
        (storage,),
        (("r", len(head)), ("s", 0), ("r", len(tail))),
    )
    entries, start = [], 0
    for i, (raw, form) in enumerate(chunks):
        parts = f'{{"w":[[{start},{start + len(raw)},[{len(payload)}]]]}}'
        entries.append(ManifestChunk(i, form.chunk_hash, parts, len(raw), form))
        start += len(raw)
    manifest = RoundManifest(
        host="h",
        client_id="1",
        round_num=1,
        layout=layout,
        residue_zstd=zstandard.ZstdCompressor().compress(head + tail),
        chunks=tuple(entries),
        bases=tuple(bases),
        source_path=None,
        created_at="",
        uploaded_at="",
    )
    bucket.put(manifest_key(bucket.url, "h", "1", 1), manifest.to_json())
    return layout.file_sha256


def restore(bucket: Bucket) -> bytes:
    out = io.BytesIO()
    restore_from_replica(bucket, "h", "1", 1, out.write)
    return out.getvalue()


def test_a_three_link_chain_restores(bucket: Bucket) -> None:
    base = os.urandom(CHUNK)
    raws = [base]
    for step in range(3):  # each version a small edit of the previous, never undoing one
        edited = bytearray(raws[-1])
        edited[step] ^= 0xFF  # a random byte could flip back an earlier edit: a cycle
        raws.append(bytes(edited))
    forms = put_chain(bucket, raws)
    sha = put_round(bucket, [(raws[-1], forms[-1]), (raws[1], forms[1])], forms[:-1])
    data = restore(bucket)
    assert hashlib.sha256(data).hexdigest() == sha
    assert data[8:-8] == raws[-1] + raws[1]


def test_a_chain_deeper_than_the_bound_is_refused(bucket: Bucket) -> None:
    raws = [os.urandom(64)]
    for i in range(MAX_CHAIN_DEPTH + 2):
        raws.append(raws[-1][:-1] + bytes([i % 256]))
    forms = put_chain(bucket, raws)
    put_round(bucket, [(raws[-1], forms[-1])], forms[:-1])
    with pytest.raises(IntegrityError, match="delta chain longer than"):
        restore(bucket)


def test_a_missing_base_is_an_integrity_error(bucket: Bucket) -> None:
    raws = [os.urandom(CHUNK), os.urandom(CHUNK)]
    forms = put_chain(bucket, raws)
    bucket.delete([chunk_key(bucket.url, forms[0].chunk_hash)])
    put_round(bucket, [(raws[1], forms[1])], forms[:1])
    with pytest.raises(IntegrityError, match="not in the bucket"):
        restore(bucket)
