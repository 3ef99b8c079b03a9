"""How large each object in the bucket may be, decided before anything is read or allocated.

Pure: numbers and checks. The bucket is shared by every host, and anything under a key of ours
may have been written by something that is not this chunkd (another version, another tool, a
damaged upload), so no size is taken on trust: every GET has a cap from what the object should
be (:meth:`chunkd.replica.bucket.Bucket.get` checks the response's length before reading and
enforces the cap while reading), and every size a manifest or an object's metadata states is
checked here before a buffer is made for it.

Why these numbers:

* a chunk's raw bytes: no chunkd writes a chunk larger than the largest ``max_chunk_bytes`` its
  config accepts (the flat index cuts every chunk to the cap). The bucket is shared by hosts that
  may have different settings and is read by ``restore --replica`` on a machine with no config
  at all, so the bound is the setting's ceiling, not this host's value;
* a chunk object: chunkd stores a compressed form only when it is smaller than the raw bytes, so
  a stored form is at most its raw size; :func:`stored_limit` adds a little for codec headers;
* a manifest: about 250 bytes per chunk, so 64 MiB is a round of ~250,000 chunks (250 GiB at the
  default 1 MiB chunks). It is parsed whole (JSON), so this is also what a sweep may hold for one
  manifest; chunkd refuses to write a larger one (:mod:`chunkd.replica.upload`), so a larger
  object under a manifest key is never a manifest this or any later chunkd reads;
* a residue: what ingest keeps (:data:`chunkd.checkpoint.MAX_RESIDUE_BYTES`); a frame declaring
  more is damage.
"""

from __future__ import annotations

from chunkd.checkpoint import MAX_RESIDUE_BYTES
from chunkd.config.values import MAX_CHUNK_BYTES
from chunkd.errors import IntegrityError

#: The largest raw chunk any chunkd writes: the ceiling of ``max_chunk_bytes``.
MAX_CHUNK_RAW_BYTES = MAX_CHUNK_BYTES
#: The largest round manifest chunkd writes or reads.
MAX_MANIFEST_BYTES = 64 << 20
#: A lock object is a few dozen bytes of JSON.
MAX_LOCK_BYTES = 4096
#: ``gc-epoch`` holds 32 hex characters.
MAX_EPOCH_BYTES = 4096
#: A quarantined object is scanned (streamed, in bounded pieces) up to this size; see
#: :mod:`chunkd.replica.quarantine` for why a larger one cannot be a manifest any chunkd wrote.
MAX_SCAN_BYTES = 1 << 30

__all__ = [
    "MAX_CHUNK_RAW_BYTES",
    "MAX_EPOCH_BYTES",
    "MAX_LOCK_BYTES",
    "MAX_MANIFEST_BYTES",
    "MAX_RESIDUE_BYTES",
    "MAX_SCAN_BYTES",
    "check_chunk_size",
    "stored_limit",
]


def stored_limit(raw_size: int) -> int:
    """The largest stored form of a chunk of ``raw_size`` raw bytes: the raw size plus a margin
    for codec framing (``zp``'s plane table, pcodec's CRC, a zstd frame's header)."""
    return raw_size + raw_size // 64 + 4096


def check_chunk_size(chunk_hash: str, size: int, *, what: str = "raw size") -> int:
    """``size`` if a chunk of that many raw bytes (or elements) can exist; else IntegrityError
    naming the chunk, the size and the bound, before anything is allocated for it."""
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_CHUNK_RAW_BYTES:
        raise IntegrityError(
            f"chunk {chunk_hash}: {what} {size!r} is outside 0..{MAX_CHUNK_RAW_BYTES} (the largest "
            "max_chunk_bytes)"
        )
    return size
