"""Byte planes: the byte-grouping transform, its zstd frames, and decoding delta chains by plane.

Grouping a chunk's bytes by significance (all byte 0s of its ``w``-byte words, then all byte 1s,
...) puts the sign and exponent bytes of floating-point weights side by side, where zstd finds
them; :mod:`chunkd.codec` decides when that pays and names the result. This module is the
mechanics underneath: the transpose and its inverse (optionally XORed with a base in the same
pass), one zstd frame per plane, and :class:`Planes`, a stored chunk read one plane at a time so
that a delta chain is XORed plane by plane and interleaved once (:func:`decode_plane_chain`).
It is separate from the codec because it knows nothing of codec names, compression settings or
pcodec, and because it holds the only state in the codec path.

Pure functions apart from per-thread zstd contexts and scratch buffers (zstd contexts are not
thread-safe; allocating them and a fresh 1 MiB buffer per chunk was a measurable cost). zstd and
the numpy transposes release the GIL, so callers may run them on a thread pool.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Sequence

import numpy as np
import zstandard

from chunkd.errors import IntegrityError

#: zstd level 1: within 0.5% of level 3's ratio on grouped weights at about twice the speed.
ZSTD_LEVEL = 1

_local = threading.local()


def group_bytes(raw: bytes | memoryview, width: int) -> bytes:
    """Transpose the ``(words, width)`` byte matrix; a tail shorter than a word stays in place."""
    return bytes(group_into_scratch(np.frombuffer(raw, dtype=np.uint8), width))


def ungroup_bytes(grouped: bytes, width: int) -> bytes:
    if width == 1:
        return grouped
    out = np.empty(len(grouped), dtype=np.uint8)
    ungroup_into(np.frombuffer(grouped, dtype=np.uint8), width, out)
    return out.tobytes()


def group_into_scratch(
    src: np.ndarray, width: int, xor_with: np.ndarray | None = None
) -> np.ndarray:
    """``src`` (XORed with ``xor_with``) grouped into this thread's scratch buffer, one pass.

    The result is only valid until the thread's next call: it is compressed straight away.
    """
    n = len(src)
    if width == 1 and xor_with is None:
        return src
    out = _scratch(n)
    body = n - n % width
    if width == 1:
        np.bitwise_xor(src, xor_with, out=out)
        return out
    planes = out[:body].reshape(width, -1)
    words = src[:body].reshape(-1, width).T
    if xor_with is None:
        planes[...] = words
        out[body:] = src[body:]
    else:
        np.bitwise_xor(words, xor_with[:body].reshape(-1, width).T, out=planes)
        np.bitwise_xor(src[body:], xor_with[body:], out=out[body:])
    return out


def ungroup_into(
    grouped: np.ndarray, width: int, out: np.ndarray, xor_with: np.ndarray | None = None
) -> None:
    n = len(grouped)
    body = n - n % width
    words = out[:body].reshape(-1, width)
    planes = grouped[:body].reshape(width, -1).T
    if xor_with is None:
        words[...] = planes
        out[body:] = grouped[body:]
    else:
        np.bitwise_xor(planes, xor_with[:body].reshape(-1, width), out=words)
        np.bitwise_xor(grouped[body:], xor_with[body:], out=out[body:])


def xor_bytes(a: bytes | memoryview, b: bytes | memoryview) -> bytes:
    return np.bitwise_xor(
        np.frombuffer(a, dtype=np.uint8), np.frombuffer(b, dtype=np.uint8)
    ).tobytes()


def compress_planes(grouped: np.ndarray, width: int) -> bytes:
    """One zstd frame per byte plane of ``grouped``, after their ``width`` u32 lengths."""
    n = len(grouped)
    plane = n // width
    zstd = compressor()
    frames = [
        zstd.compress(grouped[i * plane : n if i == width - 1 else (i + 1) * plane])
        for i in range(width)
    ]
    return b"".join([struct.pack(f"<{width}I", *(len(f) for f in frames)), *frames])


def decompress_exact(frame: memoryview, size: int) -> bytes:
    """One zstd frame that must decode to exactly ``size`` bytes (it carries a checksum)."""
    try:
        # max_output_size is ignored when the frame states its size; a damaged one may state GiBs
        if zstandard.frame_content_size(frame) not in (-1, size):
            raise IntegrityError("compressed chunk declares the wrong size")
        data = decompressor().decompress(frame, max_output_size=max(size, 1))
    except zstandard.ZstdError as e:
        raise IntegrityError(f"compressed chunk is damaged: {e}") from None
    if len(data) != size:
        raise IntegrityError("compressed chunk decodes to the wrong size")
    return data


class Planes:
    """A byte-grouped chunk (``zp``/``xzp``/``bgz``/``xbgz``, words over 1 byte) that decodes one
    byte plane at a time, so a delta chain can XOR its links plane by plane and interleave once
    (:func:`decode_plane_chain`). Grouping is a permutation of bytes and XOR works byte by byte,
    so the XOR of grouped links, interleaved, is the interleaved links XORed: the same bytes."""

    __slots__ = ("_frames", "_grouped", "delta", "raw_size", "width")

    def __init__(
        self,
        width: int,
        delta: bool,
        raw_size: int,
        frames: Sequence[memoryview] | None = None,
        grouped: bytes | None = None,
    ) -> None:
        self.width = width
        self.delta = delta
        self.raw_size = raw_size
        self._frames = frames
        self._grouped = grouped

    def plane(self, i: int) -> np.ndarray:
        """Byte plane ``i`` (read-only); the last one carries the tail shorter than a word."""
        size = self.raw_size // self.width
        start = i * size
        if i == self.width - 1:
            size += self.raw_size % self.width
        if self._frames is not None:
            return np.frombuffer(decompress_exact(self._frames[i], size), dtype=np.uint8)
        assert self._grouped is not None
        return np.frombuffer(self._grouped, dtype=np.uint8, count=size, offset=start)


def decode_plane_chain(
    chain: Sequence[Planes], base: bytes | bytearray | memoryview | None = None
) -> memoryview:
    """The raw bytes of ``chain[0]``, whose delta links run down ``chain`` to a key chunk, or to
    the last link's ``base`` (raw bytes). The caller checks that every link has the same width
    and size and that only the last one may lack a base.

    Per plane: decompress it in every link, XOR them into one buffer, then copy it once into its
    place in the words. A chain of k links costs k decompressions and XORs of contiguous planes
    but one interleave and one output buffer, instead of k of each. Memory: two planes and the
    output (and each one-frame ``bgz`` link's grouped bytes, decoded whole: chunks under 16 KiB).
    The output is returned as a read-only view, not copied into a ``bytes``: a restore writes and
    hashes it as it is.
    """
    width, raw_size = chain[0].width, chain[0].raw_size
    plane = raw_size // width
    body = plane * width
    out = np.empty(raw_size, dtype=np.uint8)
    words = out[:body].reshape(-1, width)
    for i in range(width):
        acc = chain[-1].plane(i)
        for link in chain[-2::-1]:
            if acc.flags.writeable:
                np.bitwise_xor(acc, link.plane(i), out=acc)
            else:  # the first XOR gets a buffer of its own (decompressed planes are bytes)
                acc = np.bitwise_xor(acc, link.plane(i))
        words[:, i] = acc[:plane]
        if i == width - 1:
            out[body:] = acc[plane:]
    if base is not None:  # one contiguous pass: faster than XORing each strided column
        np.bitwise_xor(out, np.frombuffer(base, dtype=np.uint8), out=out)
    return memoryview(out).toreadonly()


def _scratch(n: int) -> np.ndarray:
    buf: np.ndarray | None = getattr(_local, "scratch", None)
    if buf is None or len(buf) < n:
        buf = np.empty(max(n, 1 << 20), dtype=np.uint8)
        _local.scratch = buf
    return buf[:n]


def compressor() -> zstandard.ZstdCompressor:
    c: zstandard.ZstdCompressor | None = getattr(_local, "compressor", None)
    if c is None:
        c = _local.compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
    return c


def decompressor() -> zstandard.ZstdDecompressor:
    d: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if d is None:
        d = _local.decompressor = zstandard.ZstdDecompressor()
    return d
