"""docs/REPLICA.md describes every codec chunkd writes, well enough to decode without chunkd
(issue 21, friction 10).

The codec names are not a hand list: :func:`written` runs :func:`chunkd.codec.encode` over every
``compression``, word width, size class and with and without a base, and collects what it
writes; every codec family named by a ``*PREFIX`` constant of codec.py must be among them, so a
new family cannot slip past. Each name must be in REPLICA.md's codec table, and every chunk is
then decoded by :func:`decode_as_documented`, written from that page alone (zstandard, pcodec,
numpy, zlib; no chunkd), and must give back the raw bytes.
"""

from __future__ import annotations

import re
import struct
import zlib
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import zstandard
from pcodec import standalone

from chunkd import codec

REPLICA_MD = Path(__file__).resolve().parents[2] / "docs" / "REPLICA.md"
COMPRESSIONS = ("none", "auto", "max")
#: one size under codec.PLANES_MIN_BYTES and one over it, both with a tail of 3 bytes for w > 1
SIZES = (4096 + 3, 3 * codec.PLANES_MIN_BYTES + 3)
FLOATS = {2: np.float16, 4: np.float32, 8: np.float64}

Sample = tuple[str, bytes, bytes, bytes | None]  # codec, stored, raw, base


def _words(width: int, size: int, seed: int) -> bytes:
    """Bytes that compress like weights: smooth floats of the width (1-byte: a small alphabet)."""
    rng = np.random.default_rng(seed)
    if width == 1:
        return rng.integers(0, 4, size, dtype=np.uint8).tobytes()
    values = np.sin(np.arange(size // width + 1) / 50.0) * 0.1
    return values.astype(FLOATS[width]).tobytes()[:size]


def _near(raw: bytes, width: int, seed: int) -> bytes:
    """The same chunk one round earlier: a few low bits of some words differ."""
    out = bytearray(raw)
    rng = np.random.default_rng(seed)
    for i in rng.integers(0, len(raw) // width, len(raw) // (8 * width)):
        out[i * width] ^= 1 + int(rng.integers(0, 7))
    return bytes(out)


@cache
def written() -> tuple[Sample, ...]:
    samples: list[Sample] = []
    noise = np.random.default_rng(1).integers(0, 256, 8192, dtype=np.uint8).tobytes()
    samples.append((*codec.encode(noise, 4, "auto"), noise, None))  # type: ignore[arg-type]
    for compression in COMPRESSIONS:
        for width in codec.GROUP_WIDTHS:
            for size in SIZES:
                raw = _words(width, size, seed=width * size)
                base = _near(raw, width, seed=size)
                for b in (None, base):
                    name, stored = codec.encode(raw, width, compression, b)
                    samples.append((name, bytes(stored), raw, b))
    return tuple(samples)


def documented() -> set[str]:
    """The names REPLICA.md's codec table gives: ``raw``, and ``name<w>`` rows with their
    ``w ∈ ...`` widths expanded."""
    names: set[str] = set()
    for line in REPLICA_MD.read_text().splitlines():
        row = re.match(r"\| `(?P<name>[a-z]+)(?P<w><w>)?`(?:, `w` ∈ (?P<ws>[\d, ]+))? \|", line)
        if row is None:
            continue
        if row.group("w") is None:
            names.add(row.group("name"))
        else:
            names.update(f"{row.group('name')}{w.strip()}" for w in row.group("ws").split(","))
    return names


def test_every_codec_family_of_codec_py_is_written_here() -> None:
    """The sampling covers codec.py: each ``*PREFIX`` constant and ``raw`` is written."""
    prefixes = {v for k, v in vars(codec).items() if k.endswith("PREFIX") and isinstance(v, str)}
    assert len(prefixes) >= 6
    names = {name for name, *_ in written()}
    assert codec.CODEC_RAW in names
    for prefix in prefixes:
        family = {n for n in names if re.fullmatch(rf"{prefix}\d", n)}
        assert family, f"no codec {prefix}<w> written by the sampling"


def test_every_written_codec_is_described_in_replica_md() -> None:
    names = {name for name, *_ in written()}
    missing = names - documented()
    assert not missing, f"docs/REPLICA.md does not describe {sorted(missing)}"


def _interleave(planes: list[bytes], tail: bytes) -> bytes:
    return np.stack([np.frombuffer(p, np.uint8) for p in planes], axis=1).tobytes() + tail


def _xor(a: bytes, b: bytes) -> bytes:
    return (np.frombuffer(a, np.uint8) ^ np.frombuffer(b, np.uint8)).tobytes()


def decode_as_documented(name: str, body: bytes, n: int, base: bytes | None) -> bytes:
    """docs/REPLICA.md, "Codecs", followed literally."""
    if name == "raw":
        return body
    kind, w = re.fullmatch(r"([a-z]+)(\d)", name).groups()  # type: ignore[union-attr]
    w = int(w)
    m, t = n // w, n % w
    if kind in ("bgz", "xbgz"):
        grouped = zstandard.ZstdDecompressor().decompress(body)
        assert len(grouped) == n
        raw = _interleave([grouped[k * m : (k + 1) * m] for k in range(w)], grouped[w * m :])
        return _xor(raw, base) if kind == "xbgz" else raw  # type: ignore[arg-type]
    if kind in ("zp", "xzp"):
        lengths = struct.unpack_from(f"<{w}I", body)
        assert 4 * w + sum(lengths) == len(body)
        frames, pos = [], 4 * w
        for length in lengths:
            frames.append(zstandard.ZstdDecompressor().decompress(body[pos : pos + length]))
            pos += length
        raw = _interleave([f[:m] for f in frames], frames[-1][m:])
        assert len(frames[-1]) == m + t
        return _xor(raw, base) if kind == "xzp" else raw  # type: ignore[arg-type]
    frame, tail, crc = body[: len(body) - 4 - t], body[len(body) - 4 - t : -4], body[-4:]
    numbers = standalone.simple_decompress(frame)
    assert len(numbers) == m
    if kind == "pco":
        numbers_type = {2: "<u2", 4: "<f4", 8: "<f8"}[w]
        raw = np.asarray(numbers).astype(numbers_type).tobytes() + tail
    else:
        assert kind == "dpco" and base is not None
        unsigned = {2: "<u2", 4: "<u4", 8: "<u8"}[w]
        words = np.asarray(numbers).astype(unsigned) + np.frombuffer(base, unsigned, count=m)
        raw = words.astype(unsigned).tobytes() + _xor(tail, base[n - t :])
    assert zlib.crc32(raw).to_bytes(4, "little") == crc
    return raw


@pytest.mark.parametrize("index", range(len(written())))
def test_replica_md_is_enough_to_decode(index: int) -> None:
    name, stored, raw, base = written()[index]
    assert (
        decode_as_documented(name, stored, len(raw), base if codec.is_delta(name) else None) == raw
    )
