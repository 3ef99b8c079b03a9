"""How a chunk's raw bytes are stored: raw, or byte-grouped and zstd-compressed.

Floating-point weights compress badly as they are, because the bytes that repeat (the sign and
exponent bytes) are interleaved with mantissa bytes that look random. Grouping the bytes by
significance (all byte 0s of the part's elements, then all byte 1s, ...) puts the exponent bytes
side by side, and zstd then finds them. If that saves less than 5% the chunk is stored raw: the
CPU spent on decompression must buy something.

The SHA-256 that names a chunk is always of the raw bytes, so deduplication and verification never
depend on the codec. The codec of each stored chunk is recorded next to it (``chunk_data.codec``).

With ``delta = true`` a chunk may instead be stored as the XOR of its bytes with the chunk that
covered the same flat range in an earlier round (its *base*, always a non-delta chunk, so a chain
is one link long). Federated rounds move each weight a little; the XOR of two close floats is
mostly zero bits in the sign, exponent and high mantissa bytes, which grouping then makes long
runs for zstd. Codec ``xbgz<w>``; the base's hash is stored with the chunk.

Pure functions; zstandard releases the GIL, so callers may run them on a thread pool.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import zstandard

from chunkd.errors import IntegrityError

CODEC_RAW = "raw"
#: ``bgz<w>``: bytes grouped by significance within ``w``-byte words, then zstd. The word width is
#: part of the codec name so a chunk decodes on its own, whichever round first stored it.
_GROUPED_PREFIX = "bgz"
_DELTA_PREFIX = "xbgz"  # XOR with the base chunk, then as ``bgz``
GROUP_WIDTHS = (1, 2, 4, 8)

#: Store compressed only when it saves at least this fraction.
MIN_SAVING = 0.05
ZSTD_LEVEL = 3


def group_width(itemsizes: Sequence[int]) -> int:
    """The word width to group a chunk by: its widest scalar (complex64 groups as two float32)."""
    widest = max(itemsizes, default=1)
    return min(widest, 8)


def encode(
    raw: bytes | memoryview, width: int, compression: str, base: bytes | None = None
) -> tuple[str, bytes | memoryview]:
    """``(codec, stored bytes)`` for a chunk of ``width``-byte words (see :func:`group_width`).

    With a ``base`` (same size), the XOR delta is tried too, and the smallest form wins.
    """
    if len(raw) == 0 or (compression == "none" and base is None):
        return CODEC_RAW, raw
    if width not in GROUP_WIDTHS:
        raise ValueError(f"unsupported group width {width}")
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
    best: tuple[str, bytes | memoryview] = (CODEC_RAW, raw)
    limit = len(raw) * (1 - MIN_SAVING)
    if compression != "none":
        packed = compressor.compress(group_bytes(raw, width))
        if len(packed) <= limit:
            best = (f"{_GROUPED_PREFIX}{width}", packed)
    if base is not None and len(base) == len(raw):
        delta = compressor.compress(group_bytes(xor_bytes(raw, base), width))
        if len(delta) <= min(limit, len(best[1])):
            best = (f"{_DELTA_PREFIX}{width}", delta)
    return best


def is_delta(codec: str) -> bool:
    return codec.startswith(_DELTA_PREFIX)


def decode(codec: str, stored: bytes, raw_size: int, base: bytes | None = None) -> bytes:
    """The chunk's raw bytes; raises :class:`IntegrityError` if the stored form is damaged.

    A delta chunk needs its ``base``'s raw bytes.
    """
    if codec == CODEC_RAW:
        return stored
    delta = is_delta(codec)
    width = _width_of(codec[1:] if delta else codec)
    if delta and (base is None or len(base) != raw_size):
        raise IntegrityError("delta chunk without its base")
    try:
        # max_output_size is ignored when the frame states its size; a damaged one may state GiBs
        if zstandard.frame_content_size(stored) not in (-1, raw_size):
            raise IntegrityError("compressed chunk declares the wrong size")
        grouped = zstandard.ZstdDecompressor().decompress(stored, max_output_size=raw_size)
    except zstandard.ZstdError as e:
        raise IntegrityError(f"compressed chunk is damaged: {e}") from None
    if len(grouped) != raw_size:
        raise IntegrityError("compressed chunk decodes to the wrong size")
    raw = ungroup_bytes(grouped, width)
    return xor_bytes(raw, base) if delta and base is not None else raw


def xor_bytes(a: bytes | memoryview, b: bytes | memoryview) -> bytes:
    return np.bitwise_xor(
        np.frombuffer(a, dtype=np.uint8), np.frombuffer(b, dtype=np.uint8)
    ).tobytes()


def _width_of(codec: str) -> int:
    suffix = codec.removeprefix(_GROUPED_PREFIX)
    if codec.startswith(_GROUPED_PREFIX) and suffix.isdigit() and int(suffix) in GROUP_WIDTHS:
        return int(suffix)
    raise IntegrityError(f"unknown chunk codec {codec!r}")


def group_bytes(raw: bytes | memoryview, width: int) -> bytes:
    """Transpose the ``(words, width)`` byte matrix; a tail shorter than a word stays in place."""
    buf = np.frombuffer(raw, dtype=np.uint8)
    if width == 1:
        return buf.tobytes()
    body = len(buf) - len(buf) % width
    return buf[:body].reshape(-1, width).T.tobytes() + buf[body:].tobytes()


def ungroup_bytes(grouped: bytes, width: int) -> bytes:
    buf = np.frombuffer(grouped, dtype=np.uint8)
    if width == 1:
        return grouped
    body = len(buf) - len(buf) % width
    return buf[:body].reshape(width, -1).T.tobytes() + buf[body:].tobytes()
