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


def self_name(width: int, size: int) -> str:
    """What ``auto`` writes for a chunk on its own: one zstd frame per byte plane (``zp``), or
    for 1-byte words and small chunks the single frame of v0.1 (``bgz``)."""
    return "bgz1" if width == 1 else f"{'zp' if size >= codec.PLANES_MIN_BYTES else 'bgz'}{width}"


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
    n_words=st.integers(64, 5000),
    width=WIDTHS,
    tail=st.binary(max_size=7),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip_compressible_words_of_every_width(n_words, width, tail, seed):
    raw = compressible(n_words, width, seed) + tail[: width - 1]
    name, stored = codec.encode(raw, width, "auto")
    assert name == self_name(width, len(raw))
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
    raw = compressible(8192, width)
    name, stored = codec.encode(raw, width, "auto")
    assert name == self_name(width, len(raw))
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


@pytest.mark.parametrize("width", [1, 4])
@pytest.mark.parametrize("xor", [0x40, 0x80, 0xC0])
def test_damaged_frame_header_claiming_a_huge_size_raises_integrity_error(xor, width):
    """max_output_size does not bound a frame that states its content size: a damaged header
    must not make decode allocate whatever it claims (MemoryError)."""
    name, stored, raw = stored_chunk(width)
    first_frame = 4 * width if name.startswith("zp") else 0  # after the plane lengths
    bad = bytearray(stored)
    bad[first_frame + 4] ^= xor  # Frame_Header_Descriptor: the Frame_Content_Size field's width
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
@pytest.mark.parametrize("name", ["bgz4", "zp4", "xzp2"])
def test_garbage_under_a_compressed_codec_raises_integrity_error(garbage, name):
    with pytest.raises(IntegrityError):
        codec.decode(name, garbage, 4096, base=b"\x00" * 4096)


@pytest.mark.parametrize("delta", [-1, 1, -100])
def test_wrong_raw_size_raises_integrity_error(delta):
    name, stored, raw = stored_chunk()
    with pytest.raises(IntegrityError):
        codec.decode(name, stored, len(raw) + delta)


@pytest.mark.parametrize(
    "name", ["zstd", "bgz3", "bgz", "bgz16", "gzip", "bgzx", "", "zp", "zp1", "zp3", "xzp16", "zpx"]
)
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


def test_delta_with_a_base_of_another_size_is_self_contained():
    raw = compressible(10_000, 4)
    name, stored = codec.encode(raw, 4, "auto", base=raw[:-4])
    assert name == "zp4"
    assert codec.decode(name, bytes(stored), len(raw)) == raw


# -- v0.1 databases: every codec name it wrote still decodes ---------------------------------------

#: Frames written by chunkd v0.1 (zstd level 3): 64 float32 ``0.25 * i`` and a 3-byte tail, as
#: ``bgz<w>``, and as ``xbgz<w>`` against the same words plus 0.5 (tail ``01 02 00``).
V01_WORDS = np.arange(64, dtype=np.float32) * 0.25
V01_RAW = V01_WORDS.tobytes() + b"\x01\x02\x03"
V01_BASE = (V01_WORDS + 0.5).astype(np.float32).tobytes() + b"\x01\x02\x00"
V01_FRAMES = {
    "bgz4": (
        "28b52ffd640300ad02009404000080004080a0c0e0001020304050607080889098a0a8b0b8c0c8d0d8e0"
        "e8f0f80004080c1014181c2024282c3034383c4044484c5054585c6064686c7074787c003e3f40410102"
        "030410008dd41384c3d336be413b16"
    ),
    "xbgz4": (
        "28b52ffd640300250200e4020000c080e04040c0f0202060602020e0f81010303010107070f0fc080818"
        "18080838387878f8fe3f017f7f0101030800c0c1a0586802cd24000c0c06ba32349e022cb903ec56"
    ),
    "bgz8": (
        "28b52ffd640300e50200b404000080c0002040608090a0b0c0d0e0f00008101820283038404850586068"
        "7078003f3f3f4041008040a0e0103050708898a8b8c8d8e8f8040c141c242c343c444c545c646c747c3e"
        "01020305001998e609a4039d0d18a41268036c6b5e45"
    ),
    "xbgz8": (
        "28b52ffd640300150200b40200008040c0206020e010301070103010f00818083808180878f83f00007f"
        "01c0e040f0206020f8fcfe010308006044e86c60b200e21aa22083d157b2460960010beea055"
    ),
    "xbgz2": (
        "28b52ffd640300bd020062840d17c0a5e5b6efefffabea734c75f55785aaaeaaaabaa4640ac2e8ba23e0"
        "c1a26d69324d9214245886a265591cd6f53c89afaa0e03df030d000507be8a6fc010dc7b4321009c0104"
        "c08d95e6335f0032c079d6963134bf7c4b"
    ),
}


@pytest.mark.parametrize("name", sorted(V01_FRAMES))
def test_frames_written_by_v01_still_decode(name):
    base = V01_BASE if codec.is_delta(name) else None
    assert codec.decode(name, bytes.fromhex(V01_FRAMES[name]), len(V01_RAW), base=base) == V01_RAW


def v01_encode(raw: bytes, width: int, base: bytes | None) -> tuple[str, bytes]:
    """v0.1's encoder, frozen: grouping by numpy transpose, zstd level 3 with a checksum."""
    import zstandard

    buf = np.frombuffer(raw if base is None else codec.xor_bytes(raw, base), dtype=np.uint8)
    body = len(buf) - len(buf) % width
    grouped = buf[:body].reshape(-1, width).T.tobytes() + buf[body:].tobytes()
    frame = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(grouped)
    return (f"bgz{width}" if base is None else f"xbgz{width}"), frame


@settings(max_examples=150)
@given(raw=st.binary(min_size=1, max_size=3000), width=WIDTHS, data=st.data())
def test_every_v01_codec_name_round_trips(raw, width, data):
    base = data.draw(st.none() | st.binary(min_size=len(raw), max_size=len(raw)))
    name, frame = v01_encode(raw, width, base)
    assert codec.decode(name, frame, len(raw), base=base) == raw


# -- deltas of every width, any size ---------------------------------------------------------------


def drifted(n_words: int, width: int, seed: int, step: float) -> tuple[bytes, bytes]:
    """A round and the next: floats of the width moved a little, as SGD moves weights."""
    rng = np.random.default_rng(seed)
    kind = {1: np.uint8, 2: np.float16, 4: np.float32, 8: np.float64}[width]
    if width == 1:
        before = rng.integers(0, 256, n_words, dtype=np.uint8)
        after = (before + (rng.random(n_words) < step)).astype(np.uint8)
    else:
        before = rng.standard_normal(n_words).astype(kind)
        after = (before * (1 + step * rng.standard_normal(n_words))).astype(kind)
    return after.tobytes(), before.tobytes()


@settings(max_examples=150)
@given(
    n_words=st.integers(0, 3000),
    width=WIDTHS,
    tail=st.binary(max_size=7),
    seed=st.integers(0, 2**32 - 1),
    step=st.sampled_from([0.0, 1e-4, 1e-2, 1.0]),
    compression=st.sampled_from(["none", "auto"]),
)
def test_delta_round_trip_every_width_and_size(n_words, width, tail, seed, step, compression):
    raw, base = drifted(n_words, width, seed, step)
    raw, base = raw + tail, base + tail[::-1]
    name, stored = codec.encode(raw, width, compression, base=base)
    event(name.rstrip("12468"))
    assert len(stored) <= len(raw)
    decoded = codec.decode(
        name, bytes(stored), len(raw), base=base if codec.is_delta(name) else None
    )
    assert decoded == raw


def test_close_rounds_are_stored_as_a_delta_smaller_than_on_their_own():
    raw, base = drifted(100_000, 4, 7, 1e-3)
    alone = codec.encode(raw, 4, "auto")
    name, delta = codec.encode(raw, 4, "auto", base=base)
    assert name == "xzp4"
    assert len(delta) < 0.9 * len(alone[1])


def test_an_unrelated_base_loses_to_the_chunk_on_its_own():
    raw = compressible(50_000, 4, seed=1)
    base = os.urandom(len(raw))
    name, stored = codec.encode(raw, 4, "auto", base=base)
    assert name == "zp4"
    assert codec.decode(name, bytes(stored), len(raw)) == raw


@settings(max_examples=100)
@given(position=st.integers(0, 10**6), xor=st.integers(1, 255), width=WIDTHS)
def test_corrupted_delta_never_decodes_to_wrong_bytes(position, xor, width):
    raw, base = drifted(4096, width, 3, 1e-3)
    name, stored = codec.encode(raw, width, "auto", base=base)
    assert codec.is_delta(name)
    bad = bytearray(stored)
    bad[position % len(bad)] ^= xor
    try:
        decoded = codec.decode(name, bytes(bad), len(raw), base=base)
    except IntegrityError:
        return
    assert decoded == raw


def test_group_width_of_parts_is_the_width_of_most_bytes():
    assert codec.group_width([(460_000, 4), (8, 8)]) == 4
    assert codec.group_width([(16, 2), (8, 8)]) == 2
    assert codec.group_width([(8, 4), (8, 8)]) == 8  # a tie goes to the wider
    assert codec.group_width([(64, 16)]) == 8
    assert codec.group_width([]) == 1


def test_threads_share_nothing():
    """Per-thread zstd contexts and scratch buffers: concurrent chunks never mix."""
    from concurrent.futures import ThreadPoolExecutor

    inputs = [drifted(20_000 + 97 * i, 4, i, 1e-3) for i in range(24)]

    def round_trip(pair: tuple[bytes, bytes]) -> bool:
        raw, base = pair
        name, stored = codec.encode(raw, 4, "auto", base=base)
        again = codec.encode(raw, 4, "auto")
        return (
            codec.decode(name, bytes(stored), len(raw), base=base) == raw
            and codec.decode(again[0], bytes(again[1]), len(raw)) == raw
        )

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(round_trip, inputs * 3))


# -- compression = "max": pcodec ------------------------------------------------------------------


@settings(max_examples=150)
@given(raw=st.binary(max_size=3000), width=WIDTHS, data=st.data())
def test_max_round_trips_any_bytes_with_and_without_a_base(raw, width, data):
    """Any bit patterns (NaN payloads, infinities, denormals) come back exactly."""
    base = data.draw(st.none() | st.binary(min_size=len(raw), max_size=len(raw)))
    name, stored = codec.encode(raw, width, "max", base=base)
    event(name.rstrip("12468"))
    needed = base if codec.is_delta(name) else None
    assert codec.decode(name, bytes(stored), len(raw), base=needed) == raw


@settings(max_examples=100)
@given(
    n_words=st.integers(1, 3000),
    width=st.sampled_from([2, 4, 8]),
    tail=st.binary(max_size=7),
    seed=st.integers(0, 2**32 - 1),
    step=st.sampled_from([0.0, 1e-4, 1e-2]),
)
def test_max_codes_drifting_weights_as_pcodec_differences(n_words, width, tail, seed, step):
    raw, base = drifted(n_words, width, seed, step)
    raw, base = raw + tail[: width - 1], base + tail[: width - 1]
    name, stored = codec.encode(raw, width, "max", base=base)
    if n_words >= 500:
        assert name == f"dpco{width}"
    assert codec.decode(name, bytes(stored), len(raw), base=base) == raw


def test_max_beats_auto_on_drifting_floats():
    raw, base = drifted(200_000, 4, 11, 1e-3)
    assert len(codec.encode(raw, 4, "max", base=base)[1]) < len(
        codec.encode(raw, 4, "auto", base=base)[1]
    )
    assert len(codec.encode(raw, 4, "max")[1]) < len(codec.encode(raw, 4, "auto")[1])


def pco_chunk(delta: bool) -> tuple[str, bytes, bytes, bytes]:
    raw, base = drifted(5000, 4, 5, 1e-3)
    raw, base = raw + b"\x01\x02", base + b"\x03\x04"
    name, stored = codec.encode(raw, 4, "max", base=base if delta else None)
    assert name == ("dpco4" if delta else "pco4")
    return name, bytes(stored), raw, base


@settings(max_examples=200)
@given(position=st.integers(0, 10**6), xor=st.integers(1, 255), delta=st.booleans())
def test_corrupted_pcodec_chunk_never_decodes_to_wrong_bytes(position, xor, delta):
    """pcodec frames have no checksum; the CRC-32 of the raw bytes catches every flip that
    changes the result (a flip in a header bit pcodec does not use decodes, to the same bytes)."""
    name, stored, raw, base = pco_chunk(delta)
    bad = bytearray(stored)
    bad[position % len(bad)] ^= xor
    try:
        decoded = codec.decode(name, bytes(bad), len(raw), base=base)
    except IntegrityError:
        event("IntegrityError")
        return
    event("decoded unchanged")
    assert decoded == raw


@pytest.mark.parametrize("delta", [False, True])
def test_corrupted_pcodec_body_and_crc_raise_integrity_error(delta):
    name, stored, raw, base = pco_chunk(delta)
    for position in range(len(stored) // 4, len(stored), max(1, len(stored) // 60)):
        bad = bytearray(stored)
        bad[position] ^= 0x5A
        with pytest.raises(IntegrityError):
            codec.decode(name, bytes(bad), len(raw), base=base)


@given(cut=st.integers(0, 10**6), delta=st.booleans())
def test_truncated_pcodec_chunk_raises_integrity_error(cut, delta):
    name, stored, raw, base = pco_chunk(delta)
    with pytest.raises(IntegrityError):
        codec.decode(name, stored[: cut % len(stored)], len(raw), base=base)


@pytest.mark.parametrize("size_change", [-4, -1, 1, 4, 4000])
def test_pcodec_chunk_of_the_wrong_raw_size_raises_integrity_error(size_change):
    name, stored, raw, _ = pco_chunk(False)
    with pytest.raises(IntegrityError):
        codec.decode(name, stored, len(raw) + size_change)


def test_pcodec_delta_without_its_base_raises_integrity_error():
    name, stored, raw, base = pco_chunk(True)
    with pytest.raises(IntegrityError, match="base"):
        codec.decode(name, stored, len(raw))
    with pytest.raises(IntegrityError, match="base"):
        codec.decode(name, stored, len(raw), base=base[:-1])


@pytest.mark.parametrize("name", ["pco", "pco1", "pco3", "pco16", "dpco", "dpco1", "dpcox"])
def test_unknown_pcodec_names_raise_integrity_error(name):
    with pytest.raises(IntegrityError, match="codec"):
        codec.decode(name, b"\x00" * 16, 16, base=b"\x00" * 16)


def test_max_with_one_byte_words_falls_back_to_zstd():
    raw = compressible(4000, 1)
    assert codec.encode(raw, 1, "max")[0] == "bgz1"
