"""How a chunk's raw bytes are stored: raw, or byte-grouped and zstd-compressed.

Floating-point weights compress badly as they are, because the bytes that repeat (the sign and
exponent bytes) are interleaved with mantissa bytes that look random. Grouping the bytes by
significance (all byte 0s of the part's elements, then all byte 1s, ...) puts the exponent bytes
side by side, and zstd then finds them. If that saves less than 5% the chunk is stored raw: the
CPU spent on decompression must buy something.

The SHA-256 that names a chunk is always of the raw bytes, so deduplication and verification never
depend on the codec. The codec of each stored chunk is recorded next to it (``chunk_data.codec``).

With a *base* (the raw bytes of the chunk that covered the same flat range in another round,
normally the previous one) a chunk may instead be stored as the XOR of the two, grouped and
compressed the same way. Federated rounds move each weight a little; the XOR of two close floats
is mostly zero bits in the sign, exponent and high mantissa bytes. Which chunk is the base, and
how long chains get, is the store's business: this module only needs the base's raw bytes.

Codec names (every one ever written still decodes):

* ``raw``;
* ``bgz<w>`` / ``xbgz<w>`` (v0.1): grouped by ``w``-byte words into one zstd frame, on its own /
  XORed with the base; still written for 1-byte words and chunks under 16 KiB;
* ``zp<w>`` / ``xzp<w>`` (``compression = "auto"``): the same, but one zstd frame per byte plane;
* ``pco<w>`` / ``dpco<w>`` (``compression = "max"``): pcodec, see :func:`_encode_pco`.

Why these (measured on a real FedAvg trajectory, ``benchmarks/RESULTS.md``, "Codec comparison"):
XOR beat the integer difference of the bit patterns (also after mapping sign-magnitude floats
onto ordered integers) with every byte-oriented coder, so the transform needs only the word
width, never the dtype. zstd level 1 gives level 3's ratio (within 0.5%) at twice the speed, and
a frame per plane gives each plane its own entropy tables and lets zstd store a plane of noise
(low mantissa bytes) as raw blocks: 1-3% smaller and faster than one frame. blosc2 (shuffle +
zstd) came within 1% of one frame but not of per-plane frames, and would bring six more
dependencies. pcodec reaches the per-plane entropy yardstick and goes below it on integer
differences (it models numbers, not bytes), but encodes at a fifth of the speed: it is ``max``.

``pco<w>`` codes the words as numbers (f32/f64; 2-byte words as u16, since bf16 and f16 cannot be
told apart by width), ``dpco<w>`` the wrapping integer difference of the bit patterns from the
base. pcodec frames carry no checksum, so these chunks end with the CRC-32 of their raw bytes;
1-byte words fall back to ``bgz1``/``xbgz1``.

The transpose, the per-plane frames and plane-by-plane chain decoding are
:mod:`chunkd.byteplanes` (re-exported here); this module names, chooses and dispatches. Pure
functions apart from byteplanes' per-thread zstd contexts and scratch buffers; zstd and the numpy
transposes release the GIL, so callers may run them on a thread pool.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Collection, Sequence

import numpy as np
import zstandard

from chunkd.byteplanes import (
    ZSTD_LEVEL,
    Planes,
    decode_plane_chain,
    group_bytes,
    ungroup_bytes,
    xor_bytes,
)
from chunkd.byteplanes import compress_planes as _compress_planes
from chunkd.byteplanes import compressor as _compressor
from chunkd.byteplanes import decompress_exact as _decompress_exact
from chunkd.byteplanes import decompressor as _decompressor
from chunkd.byteplanes import group_into_scratch as _grouped
from chunkd.byteplanes import ungroup_into as _ungroup_into
from chunkd.errors import IntegrityError

CODEC_RAW = "raw"
#: ``bgz<w>``: bytes grouped by significance within ``w``-byte words, then zstd. The word width is
#: part of the codec name so a chunk decodes on its own, whichever round first stored it.
_GROUPED_PREFIX = "bgz"
_DELTA_PREFIX = "xbgz"  # XOR with the base chunk, then as ``bgz``
GROUP_WIDTHS = (1, 2, 4, 8)
#: ``zp<w>``: grouped as ``bgz``, but one zstd frame per byte plane (the last one carries the
#: tail), after a header of ``w`` little-endian u32 frame lengths. Every frame has zstd's
#: checksum, so every stored byte is covered.
_PLANES_PREFIX = "zp"
_PLANES_DELTA_PREFIX = "xzp"  # XOR with the base chunk, then as ``zp``
#: Below this a chunk is one frame (``bgz``): per-plane frame headers would cost more than saved.
PLANES_MIN_BYTES = 16 << 10
_PCO_PREFIX = "pco"  # pcodec of the words as numbers (``compression = "max"``)
_PCO_DELTA_PREFIX = "dpco"  # pcodec of the integer difference from the base
#: the numpy type pcodec codes each word width as, self-contained and as a difference
_PCO_TYPES = {2: np.uint16, 4: np.float32, 8: np.float64}
_UINT_TYPES = {2: np.uint16, 4: np.uint32, 8: np.uint64}
_PCO_LEVEL = 8  # pcodec's default: level 4 lost 3% of the ratio for no reliable speed gain

#: Store compressed only when it saves at least this fraction.
MIN_SAVING = 0.05
#: A delta at most this share of the raw size is kept without also trying the chunk on its own
#: (one compression instead of two per chunk; FedAvg deltas are far below it).
DELTA_GOOD_ENOUGH = 0.85


def group_width(itemsizes: Sequence[int] | Sequence[tuple[int, int]]) -> int:
    """The word width to code a chunk by (complex64 counts as two float32).

    Given item sizes, the widest (v0.1). Given ``(nbytes, itemsize)`` pairs
    (``ChunkSpec.itemsizes()``), the item size that covers most bytes: byte grouping does not care
    (grouping by a multiple of the width codes the same), but pcodec does, and a BatchNorm
    ``num_batches_tracked`` (int64) must not make it read a chunk of bf16 weights as float64.
    """
    if itemsizes and isinstance(itemsizes[0], tuple):
        weight: dict[int, int] = {}
        for nbytes, size in itemsizes:  # type: ignore[misc]
            weight[min(size, 8)] = weight.get(min(size, 8), 0) + nbytes
        return max(sorted(weight, reverse=True), key=lambda w: weight[w])
    return min(max(itemsizes, default=1), 8)  # type: ignore[type-var]


def encode(
    raw: bytes | bytearray | memoryview,
    width: int,
    compression: str,
    base: bytes | bytearray | memoryview | None = None,
) -> tuple[str, bytes | memoryview]:
    """``(codec, stored bytes)`` for a chunk of ``width``-byte words (see :func:`group_width`).

    With a ``base`` of the same size the delta (XOR; the integer difference for ``max``) is coded
    first; the chunk on its own is tried too only when the delta is poor (over
    :data:`DELTA_GOOD_ENOUGH`), and the smaller form wins.
    """
    if len(raw) == 0 or (compression == "none" and base is None):
        return CODEC_RAW, raw
    if width not in GROUP_WIDTHS:
        raise ValueError(f"unsupported group width {width}")
    if compression == "max" and width in _PCO_TYPES:
        return _encode_pco(raw, width, base)
    best: tuple[str, bytes | memoryview] = (CODEC_RAW, raw)
    limit = len(raw) * (1 - MIN_SAVING)
    src = np.frombuffer(raw, dtype=np.uint8)
    planes = width > 1 and len(raw) >= PLANES_MIN_BYTES
    if base is not None and len(base) == len(raw):
        grouped = _grouped(src, width, np.frombuffer(base, dtype=np.uint8))
        delta = _compress_planes(grouped, width) if planes else _compressor().compress(grouped)
        if len(delta) <= limit:
            best = (f"{_PLANES_DELTA_PREFIX if planes else _DELTA_PREFIX}{width}", delta)
        if len(delta) <= len(raw) * DELTA_GOOD_ENOUGH:
            return best
    if compression != "none":
        grouped = _grouped(src, width)
        packed = _compress_planes(grouped, width) if planes else _compressor().compress(grouped)
        if len(packed) <= min(limit, len(best[1])):
            best = (f"{_PLANES_PREFIX if planes else _GROUPED_PREFIX}{width}", packed)
    return best


def is_delta(codec: str) -> bool:
    return codec.startswith((_DELTA_PREFIX, _PCO_DELTA_PREFIX, _PLANES_DELTA_PREFIX))


def compression_of(codec: str) -> str:
    """The ``compression`` setting that writes ``codec``'s family: re-coding a chunk (a delta
    made a key chunk) keeps the family the store was written with."""
    if codec.startswith((_PCO_PREFIX, _PCO_DELTA_PREFIX)):
        return "max"
    return "none" if codec == CODEC_RAW else "auto"


def decode(
    codec: str,
    stored: bytes | memoryview,
    raw_size: int,
    base: bytes | bytearray | memoryview | None = None,
) -> bytes:
    """The chunk's raw bytes; raises :class:`IntegrityError` if the stored form is damaged.

    A delta chunk needs its ``base``'s raw bytes.
    """
    if codec == CODEC_RAW:
        return stored if isinstance(stored, bytes) else bytes(stored)
    if codec.startswith((_PCO_PREFIX, _PCO_DELTA_PREFIX)):
        return _decode_pco(codec, stored, raw_size, base)
    if codec.startswith((_PLANES_PREFIX, _PLANES_DELTA_PREFIX)):
        return _decode_planes(codec, stored, raw_size, base)
    delta = is_delta(codec)
    width = _width_of(codec[1:] if delta else codec)
    if delta and (base is None or len(base) != raw_size):
        raise IntegrityError("delta chunk without its base")
    try:
        # max_output_size is ignored when the frame states its size; a damaged one may state GiBs
        if zstandard.frame_content_size(stored) not in (-1, raw_size):
            raise IntegrityError("compressed chunk declares the wrong size")
        grouped = _decompressor().decompress(stored, max_output_size=raw_size)
    except zstandard.ZstdError as e:
        raise IntegrityError(f"compressed chunk is damaged: {e}") from None
    if len(grouped) != raw_size:
        raise IntegrityError("compressed chunk decodes to the wrong size")
    if not delta:
        return ungroup_bytes(grouped, width)
    assert base is not None  # checked above
    out = np.empty(raw_size, dtype=np.uint8)
    _ungroup_into(np.frombuffer(grouped, dtype=np.uint8), width, out, np.frombuffer(base, np.uint8))
    return out.tobytes()


def _decode_planes(
    codec: str,
    stored: bytes | memoryview,
    raw_size: int,
    base: bytes | bytearray | memoryview | None,
) -> bytes:
    planes = planes_of(codec, stored, raw_size)
    assert planes is not None  # a zp/xzp name: planes_of parses it or raises
    if planes.delta and (base is None or len(base) != raw_size):
        raise IntegrityError("delta chunk without its base")
    return decode_plane_chain([planes], base if planes.delta else None).tobytes()


def planes_of(codec: str, stored: bytes | memoryview, raw_size: int) -> Planes | None:
    """``stored`` as :class:`Planes`, or None for a codec that is not byte-grouped (``raw``,
    pcodec, 1-byte words). IntegrityError if its header (or a ``bgz`` frame) is damaged; a
    ``zp`` plane's frame is checked when that plane is decoded."""
    if codec.startswith((_PLANES_PREFIX, _PLANES_DELTA_PREFIX)):
        delta, width = _parse_name(codec, _PLANES_PREFIX, _PLANES_DELTA_PREFIX, GROUP_WIDTHS[1:])
        view = memoryview(stored)
        pos = 4 * width
        if len(view) < pos:
            raise IntegrityError("compressed chunk is truncated")
        lengths = struct.unpack_from(f"<{width}I", view)
        if pos + sum(lengths) != len(view):
            raise IntegrityError("compressed chunk's plane lengths do not add up")
        frames = []
        for length in lengths:
            frames.append(view[pos : pos + length])
            pos += length
        return Planes(width, delta, raw_size, frames=frames)
    if codec.startswith((_GROUPED_PREFIX, _DELTA_PREFIX)):
        delta = is_delta(codec)
        width = _width_of(codec[1:] if delta else codec)
        if width == 1:
            return None
        return Planes(
            width, delta, raw_size, grouped=_decompress_exact(memoryview(stored), raw_size)
        )
    return None


def _encode_pco(
    raw: bytes | bytearray | memoryview,
    width: int,
    base: bytes | bytearray | memoryview | None,
) -> tuple[str, bytes | memoryview]:
    """``compression = "max"``: the difference from ``base`` if good enough, else the words."""
    from pcodec import ChunkConfig, standalone  # only "max" needs it loaded

    config = ChunkConfig(compression_level=_PCO_LEVEL)
    body = len(raw) - len(raw) % width
    crc = zlib.crc32(raw).to_bytes(4, "little")
    best: tuple[str, bytes | memoryview] = (CODEC_RAW, raw)
    limit = len(raw) * (1 - MIN_SAVING)
    if base is not None and len(base) == len(raw):
        kind = _UINT_TYPES[width]
        words = np.frombuffer(raw, dtype=kind, count=body // width)
        diff = words - np.frombuffer(base, dtype=kind, count=body // width)  # wraps: lossless
        tail = xor_bytes(memoryview(raw)[body:], memoryview(base)[body:])
        delta = standalone.simple_compress(diff, config) + tail + crc
        if len(delta) <= limit:
            best = (f"{_PCO_DELTA_PREFIX}{width}", delta)
        if len(delta) <= len(raw) * DELTA_GOOD_ENOUGH:
            return best
    words = np.frombuffer(raw, dtype=_PCO_TYPES[width], count=body // width)
    packed = standalone.simple_compress(words, config) + bytes(memoryview(raw)[body:]) + crc
    if len(packed) <= min(limit, len(best[1])):
        best = (f"{_PCO_PREFIX}{width}", packed)
    return best


def _decode_pco(
    codec: str,
    stored: bytes | memoryview,
    raw_size: int,
    base: bytes | bytearray | memoryview | None,
) -> bytes:
    from pcodec import standalone

    delta, width = _parse_name(codec, _PCO_PREFIX, _PCO_DELTA_PREFIX, _PCO_TYPES, base, raw_size)
    tail_len = raw_size % width
    frame_end = len(stored) - 4 - tail_len
    if frame_end < 0:
        raise IntegrityError("compressed chunk is truncated")
    view = memoryview(stored)
    kind = _UINT_TYPES[width] if delta else _PCO_TYPES[width]
    out = np.empty(raw_size // width, dtype=kind)  # the frame cannot make it allocate more
    try:
        progress = standalone.simple_decompress_into(bytes(view[:frame_end]), out)
    except (RuntimeError, TypeError, ValueError) as e:
        raise IntegrityError(f"compressed chunk is damaged: {e}") from None
    if progress.n_processed != len(out) or not progress.finished:
        raise IntegrityError("compressed chunk decodes to the wrong size")
    tail = view[frame_end : frame_end + tail_len]
    if delta:
        assert base is not None  # checked above
        out += np.frombuffer(base, dtype=kind, count=len(out))  # wraps, undoing the difference
        tail = memoryview(xor_bytes(tail, memoryview(base)[raw_size - tail_len :]))
    raw = out.tobytes() + bytes(tail) if tail_len else out.tobytes()
    if zlib.crc32(raw).to_bytes(4, "little") != bytes(view[len(stored) - 4 :]):
        raise IntegrityError("compressed chunk fails its CRC-32")
    return raw


def _parse_name(
    codec: str,
    key_prefix: str,
    delta_prefix: str,
    widths: Collection[int],
    base: bytes | bytearray | memoryview | None = None,
    raw_size: int | None = None,
) -> tuple[bool, int]:
    """``(is a delta, word width)`` from a codec name such as ``xzp4``; IntegrityError for an
    unknown name or (given ``raw_size``) a delta whose base is missing or of the wrong size."""
    delta = codec.startswith(delta_prefix)
    suffix = codec.removeprefix(delta_prefix if delta else key_prefix)
    if not suffix.isdigit() or int(suffix) not in widths:
        raise IntegrityError(f"unknown chunk codec {codec!r}")
    if delta and raw_size is not None and (base is None or len(base) != raw_size):
        raise IntegrityError("delta chunk without its base")
    return delta, int(suffix)


def _width_of(codec: str) -> int:
    suffix = codec.removeprefix(_GROUPED_PREFIX)
    if codec.startswith(_GROUPED_PREFIX) and suffix.isdigit() and int(suffix) in GROUP_WIDTHS:
        return int(suffix)
    raise IntegrityError(f"unknown chunk codec {codec!r}")


__all__ = [
    "CODEC_RAW",
    "DELTA_GOOD_ENOUGH",
    "GROUP_WIDTHS",
    "MIN_SAVING",
    "PLANES_MIN_BYTES",
    "ZSTD_LEVEL",
    "Planes",
    "compression_of",
    "decode",
    "decode_plane_chain",
    "encode",
    "group_bytes",
    "group_width",
    "is_delta",
    "planes_of",
    "ungroup_bytes",
    "xor_bytes",
]
