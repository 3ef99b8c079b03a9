"""How chunk bytes are stored: raw, or byte-grouped and zstd-compressed; always lossless."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from chunkd import codec
from chunkd.errors import IntegrityError

WIDTHS = st.sampled_from(codec.GROUP_WIDTHS)


def compressible(n_words: int, width: int, seed: int = 0) -> bytes:
    """Float-like words: random low bytes, a nearly constant top byte (the 'exponent')."""
    rng = np.random.default_rng(seed)
    words = rng.integers(0, 256, size=(n_words, width), dtype=np.uint8)
    words[:, -1] = 0x3F
    if width > 1:
        words[:, -2] = rng.integers(0x80, 0x84, size=n_words, dtype=np.uint8)
    return words.tobytes()


@settings(max_examples=300)
@given(raw=st.binary(max_size=2000), width=WIDTHS)
def test_group_bytes_is_a_permutation_undone_by_ungroup(raw, width):
    grouped = codec.group_bytes(raw, width)
    assert len(grouped) == len(raw)
    assert sorted(grouped) == sorted(raw)
    assert codec.ungroup_bytes(grouped, width) == raw


def test_group_bytes_puts_each_significance_together():
    raw = bytes([0, 1, 2, 3, 10, 11, 12, 13, 20, 21, 22, 23, 99])
    assert codec.group_bytes(raw, 4) == bytes([0, 10, 20, 1, 11, 21, 2, 12, 22, 3, 13, 23, 99])


@settings(max_examples=200)
@given(raw=st.binary(max_size=3000), width=WIDTHS, compression=st.sampled_from(["none", "auto"]))
def test_round_trip_any_bytes(raw, width, compression):
    name, stored = codec.encode(raw, width, compression)
    assert codec.decode(name, bytes(stored), len(raw)) == raw


@settings(max_examples=100)
@given(
    n_words=st.integers(64, 2000),
    width=WIDTHS,
    tail=st.binary(max_size=7),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip_compressible_words_of_every_width(n_words, width, tail, seed):
    raw = compressible(n_words, width, seed) + tail[: width - 1]
    name, stored = codec.encode(raw, width, "auto")
    assert name == f"bgz{width}"
    assert len(stored) <= len(raw) * (1 - codec.MIN_SAVING)
    assert codec.decode(name, bytes(stored), len(raw)) == raw


def test_byte_grouping_helps_floats():
    raw = np.random.default_rng(1).standard_normal(4096).astype(np.float32).tobytes()
    plain = codec.encode(raw, 1, "auto")[1]
    grouped = codec.encode(raw, 4, "auto")[1]
    assert len(grouped) < len(plain) <= len(raw)


@given(raw=st.binary(max_size=5000), width=WIDTHS)
def test_compression_none_stays_raw(raw, width):
    name, stored = codec.encode(raw, width, "none")
    assert name == codec.CODEC_RAW
    assert bytes(stored) == raw


@pytest.mark.parametrize("width", codec.GROUP_WIDTHS)
def test_incompressible_data_stays_raw(width):
    raw = os.urandom(64 << 10)
    name, stored = codec.encode(raw, width, "auto")
    assert name == codec.CODEC_RAW
    assert bytes(stored) == raw


def test_empty_chunk_stays_raw():
    assert codec.encode(b"", 4, "auto") == (codec.CODEC_RAW, b"")
    assert codec.decode(codec.CODEC_RAW, b"", 0) == b""


@pytest.mark.parametrize(
    ("itemsizes", "width"), [([4], 4), ([2, 4], 4), ([1], 1), ([8, 16], 8), ([16], 8), ([], 1)]
)
def test_group_width_is_the_widest_scalar(itemsizes, width):
    assert codec.group_width(itemsizes) == width


def test_unsupported_width_is_refused():
    with pytest.raises(ValueError):
        codec.encode(b"abcdef", 3, "auto")


# -- damage ----------------------------------------------------------------------------------------


def stored_chunk(width: int = 4) -> tuple[str, bytes, bytes]:
    raw = compressible(4096, width)
    name, stored = codec.encode(raw, width, "auto")
    assert name.startswith("bgz")
    return name, bytes(stored), raw


@settings(max_examples=300)
@given(position=st.integers(0, 10**6), xor=st.integers(1, 255), width=WIDTHS)
def test_corrupted_compressed_bytes_never_decode_to_wrong_bytes(position, xor, width):
    """A flipped byte raises IntegrityError; only a flip in a bit the frame does not use (a
    header flag, an unused code) may decode, and then to exactly the original bytes."""
    name, stored, raw = stored_chunk(width)
    bad = bytearray(stored)
    bad[position % len(bad)] ^= xor
    try:
        decoded = codec.decode(name, bytes(bad), len(raw))
    except IntegrityError:
        event("IntegrityError")
        return
    event("decoded unchanged")
    assert decoded == raw


@pytest.mark.parametrize("width", codec.GROUP_WIDTHS)
def test_corrupted_block_bytes_raise_integrity_error(width):
    name, stored, raw = stored_chunk(width)
    for position in range(len(stored) // 3, len(stored), max(1, len(stored) // 50)):
        bad = bytearray(stored)
        bad[position] ^= 0x5A
        with pytest.raises(IntegrityError):
            codec.decode(name, bytes(bad), len(raw))


@pytest.mark.parametrize("xor", [0x40, 0x80, 0xC0])
def test_damaged_frame_header_claiming_a_huge_size_raises_integrity_error(xor):
    """max_output_size does not bound a frame that states its content size: a damaged header
    must not make decode allocate whatever it claims (MemoryError)."""
    name, stored, raw = stored_chunk()
    bad = bytearray(stored)
    bad[4] ^= xor  # Frame_Header_Descriptor: the Frame_Content_Size field's width
    with pytest.raises(IntegrityError):
        codec.decode(name, bytes(bad), len(raw))


@given(cut=st.integers(0, 10**6))
def test_truncated_compressed_bytes_raise_integrity_error(cut):
    name, stored, raw = stored_chunk()
    with pytest.raises(IntegrityError):
        codec.decode(name, stored[: cut % len(stored)], len(raw))


@pytest.mark.parametrize(
    "garbage", [b"", b"\x00" * 32, os.urandom(100), struct.pack("<I", 0xFD2FB528) + os.urandom(40)]
)
def test_garbage_under_a_compressed_codec_raises_integrity_error(garbage):
    with pytest.raises(IntegrityError):
        codec.decode("bgz4", garbage, 4096)


@pytest.mark.parametrize("delta", [-1, 1, -100])
def test_wrong_raw_size_raises_integrity_error(delta):
    name, stored, raw = stored_chunk()
    with pytest.raises(IntegrityError):
        codec.decode(name, stored, len(raw) + delta)


@pytest.mark.parametrize("name", ["zstd", "bgz3", "bgz", "bgz16", "gzip", "bgzx", ""])
def test_unknown_codec_raises_integrity_error(name):
    with pytest.raises(IntegrityError, match="codec"):
        codec.decode(name, b"\x00" * 16, 16)


# -- XOR delta against an earlier round's chunk ----------------------------------------------------


@settings(max_examples=100)
@given(
    n_words=st.integers(16, 1000),
    width=WIDTHS,
    seed=st.integers(0, 2**32 - 1),
    changed=st.integers(0, 20),
)
def test_delta_round_trip(n_words, width, seed, changed):
    base = compressible(n_words, width, seed)
    raw = bytearray(base)
    rng = np.random.default_rng(seed + 1)
    for i in rng.integers(0, len(raw), size=changed):
        raw[i] ^= 0x01
    name, stored = codec.encode(bytes(raw), width, "none", base=base)
    decoded = codec.decode(
        name, bytes(stored), len(raw), base=base if codec.is_delta(name) else None
    )
    assert decoded == bytes(raw)


def test_delta_chunk_without_its_base_raises_integrity_error():
    base = compressible(1000, 4)
    raw = bytearray(base)
    raw[10] ^= 1
    name, stored = codec.encode(bytes(raw), 4, "auto", base=base)
    assert codec.is_delta(name)
    with pytest.raises(IntegrityError, match="base"):
        codec.decode(name, bytes(stored), len(raw))
    with pytest.raises(IntegrityError, match="base"):
        codec.decode(name, bytes(stored), len(raw), base=base[:-1])
