"""The zip layout of a checkpoint, parsed from crafted byte strings (no files)."""

from __future__ import annotations

import contextlib
import io
import struct
import zipfile

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import RawEntry, build_raw_zip, local_header

from chunkd import pthzip
from chunkd.errors import (
    CheckpointError,
    LegacyFormatError,
    NotACheckpointError,
    TruncatedError,
)


def reader(data: bytes):
    def read_at(offset: int, size: int) -> bytes:
        if offset + size > len(data):
            raise TruncatedError("past the end")
        return data[offset : offset + size]

    return read_at


def central(data: bytes) -> pthzip.CentralDirectory:
    return pthzip.read_central_directory(len(data), data[-pthzip.TAIL_BYTES :], reader(data))


def records(data: bytes) -> dict[str, pthzip.ZipRecord]:
    """What checkpoint.py does with the pure functions, on bytes."""
    cd = central(data)
    out = {}
    for entry in cd.entries:
        header = data[entry.header_offset : entry.header_offset + pthzip.LOCAL_HEADER_SIZE]
        record = pthzip.locate_record(entry, header, len(data))
        name_len = struct.unpack_from("<H", header, 26)[0]
        start = entry.header_offset + 30
        pthzip.check_local_name(record, data[start : start + name_len])
        out[entry.name] = record
    pthzip.check_no_overlap(list(out.values()), cd.offset)
    return out


def checkpoint_entries(top: bytes = b"ckpt") -> list[RawEntry]:
    return [
        RawEntry(top + b"/data.pkl", b"\x80\x02}q\x00."),
        RawEntry(top + b"/data/0", bytes(range(64))),
        RawEntry(top + b"/version", b"3\n"),
    ]


def torch_file() -> bytes:
    buf = io.BytesIO()
    torch.save({"w": torch.arange(100, dtype=torch.float32), "b": torch.zeros(3)}, buf)
    return buf.getvalue()


# -- what torch writes -----------------------------------------------------------------------------


def test_real_checkpoint_layout_matches_zipfile():
    data = torch_file()
    recs = records(data)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert list(recs) == zf.namelist()
        for info in zf.infolist():
            record = recs[info.filename]
            assert record.crc32 == info.CRC
            assert data[record.data_start : record.data_end] == zf.read(info.filename)
    assert central(data).top == "archive"
    # storage payloads are 64-byte aligned in the file
    assert recs["archive/data/0"].data_start % 64 == 0


def test_crafted_checkpoint_parses():
    data = build_raw_zip(checkpoint_entries())
    recs = records(data)
    assert central(data).top == "ckpt"
    assert data[recs["ckpt/data/0"].data_start : recs["ckpt/data/0"].data_end] == bytes(range(64))


def test_zip64_end_records_parse_like_plain_ones():
    plain = central(build_raw_zip(checkpoint_entries()))
    zip64 = central(build_raw_zip(checkpoint_entries(), zip64_eocd=True))
    assert zip64.entries == plain.entries
    assert (zip64.offset, zip64.size, zip64.top) == (plain.offset, plain.size, plain.top)


def test_zip64_sizes_in_the_extra_field():
    entries = checkpoint_entries()
    payload = entries[1].data
    entries[1] = RawEntry(
        b"ckpt/data/0",
        payload,
        cd_size=0xFFFFFFFF,
        cd_extra=struct.pack("<HHQQ", 1, 16, len(payload), len(payload)),
    )
    assert records(build_raw_zip(entries))["ckpt/data/0"].size == len(payload)


def test_zip64_placeholder_without_its_extra_field():
    entries = checkpoint_entries()
    entries[1] = RawEntry(b"ckpt/data/0", entries[1].data, cd_size=0xFFFFFFFF)
    with pytest.raises(NotACheckpointError, match="zip64"):
        central(build_raw_zip(entries))


def test_zip64_locator_missing():
    data = bytearray(build_raw_zip(checkpoint_entries(), zip64_eocd=True))
    locator = data.rindex(b"PK\x06\x07")
    data[locator : locator + 4] = b"XXXX"
    with pytest.raises(NotACheckpointError, match="locator"):
        central(bytes(data))


@pytest.mark.parametrize(
    ("head", "legacy"),
    [
        (b"\x80\x02\x8a\x0alo", True),
        (b"\x00" * 257 + b"ustar\x00", True),
        (b"PK\x03\x04" + b"\x00" * 300, False),
        (b"hello", False),
    ],
)
def test_sniff_legacy(head, legacy):
    assert pthzip.sniff_legacy(head) is legacy


# -- end record and central directory -------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"PK", b"PK\x03\x04" + bytes(100), bytes(70_000)])
def test_no_end_record(data):
    with pytest.raises(NotACheckpointError, match="end-of-central-directory"):
        pthzip.read_central_directory(len(data), data[-pthzip.TAIL_BYTES :], reader(data))


def test_end_record_cut_short():
    data = build_raw_zip(checkpoint_entries())
    assert pthzip.find_end_record(data) == len(data) - 22
    assert pthzip.find_end_record(data[:-1]) == -1
    with pytest.raises(NotACheckpointError):
        central(data[:-1])


def test_central_directory_past_the_end_is_truncation():
    entries = checkpoint_entries()
    size = len(build_raw_zip(entries))
    with pytest.raises(TruncatedError):
        central(build_raw_zip(entries, cd_offset=size))


def test_bad_central_directory_signature():
    data = bytearray(build_raw_zip(checkpoint_entries()))
    data[data.index(b"PK\x01\x02")] = ord("X")
    with pytest.raises(NotACheckpointError, match="central directory"):
        central(bytes(data))


def test_central_directory_shifted():
    entries = checkpoint_entries()
    good = build_raw_zip(entries)
    shifted = build_raw_zip(entries, cd_offset=good.index(b"PK\x01\x02") - 3)
    with pytest.raises(NotACheckpointError):
        central(shifted)


def test_more_entries_declared_than_present():
    with pytest.raises(NotACheckpointError, match="central directory"):
        central(build_raw_zip(checkpoint_entries(), entry_count=4))


def test_absurd_entry_count():
    with pytest.raises(NotACheckpointError, match="too large"):
        central(build_raw_zip(checkpoint_entries(), zip64_eocd=True, entry_count=2_000_000))


def test_trailing_garbage_after_the_end_record():
    with pytest.raises(NotACheckpointError, match="does not end the file"):
        central(build_raw_zip(checkpoint_entries(), trailing=b"garbage"))


def test_multi_disk_archive():
    with pytest.raises(LegacyFormatError, match="multi-disk"):
        central(build_raw_zip(checkpoint_entries(), disk=1))


@pytest.mark.parametrize(
    ("method", "flags", "match"), [(8, 0, "compressed"), (12, 0, "compressed"), (0, 1, "encrypted")]
)
def test_compressed_or_encrypted_member(method, flags, match):
    entries = checkpoint_entries()
    entries[1] = RawEntry(b"ckpt/data/0", entries[1].data, method=method, flags=flags)
    with pytest.raises(LegacyFormatError, match=match):
        central(build_raw_zip(entries))


def test_sizes_disagree():
    entries = checkpoint_entries()
    entries[1] = RawEntry(b"ckpt/data/0", entries[1].data, compressed_size=10)
    with pytest.raises(NotACheckpointError, match="sizes disagree"):
        central(build_raw_zip(entries))


# -- member names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        b"/ckpt/data/1",
        b"ckpt/../data/1",
        b"ckpt/../../etc/passwd",
        b"ckpt\\data\\1",
        b"ckpt/./data/1",
        b"ckpt//data/1",
        b"ckpt/data/1\x00.txt",
        b"..",
        b"ckpt/data/1/",
        b"",
    ],
)
def test_unsafe_member_names(name):
    with pytest.raises(NotACheckpointError, match="unsafe zip member name"):
        central(build_raw_zip([*checkpoint_entries(), RawEntry(name, b"x")]))


def test_invalid_utf8_name():
    entry = RawEntry(b"ckpt/\xff\xfe", b"x", flags=0x800)
    with pytest.raises(NotACheckpointError, match="UTF-8"):
        central(build_raw_zip([*checkpoint_entries(), entry]))


def test_member_listed_twice():
    with pytest.raises(NotACheckpointError, match="twice"):
        central(build_raw_zip([*checkpoint_entries(), RawEntry(b"ckpt/version", b"3\n")]))


@pytest.mark.parametrize(
    "entries",
    [
        [RawEntry(b"a/data.pkl", b"."), RawEntry(b"b/data/0", b"x")],
        [RawEntry(b"a/data.pkl", b"."), RawEntry(b"version", b"3")],
        [RawEntry(b"a/notes.txt", b"hello")],
        [],
    ],
    ids=["two-tops", "member-at-root", "no-data.pkl", "empty"],
)
def test_not_one_checkpoint_folder(entries):
    with pytest.raises(NotACheckpointError):
        central(build_raw_zip(entries))


# -- local headers and overlaps --------------------------------------------------------------------


def test_local_header_problems():
    data = build_raw_zip(checkpoint_entries())
    entry = central(data).entries[1]
    header = data[entry.header_offset : entry.header_offset + 30]
    with pytest.raises(TruncatedError):
        pthzip.locate_record(entry, header[:29], len(data))
    with pytest.raises(NotACheckpointError, match="no local header"):
        pthzip.locate_record(entry, b"XXXX" + header[4:], len(data))
    compressed = header[:8] + struct.pack("<H", 8) + header[10:]
    with pytest.raises(LegacyFormatError, match="not STORED"):
        pthzip.locate_record(entry, compressed, len(data))
    with pytest.raises(TruncatedError, match="past the end"):
        pthzip.locate_record(entry, header, entry.header_offset + 40)


def test_local_name_must_match_the_central_directory():
    entries = checkpoint_entries()
    entries[1] = RawEntry(b"ckpt/data/0", entries[1].data, local_name=b"ckpt/data/9")
    with pytest.raises(NotACheckpointError, match="local header names"):
        records(build_raw_zip(entries))


def test_two_entries_sharing_one_local_header():
    entries = checkpoint_entries()
    entries.append(RawEntry(b"ckpt/byteorder", b"little", write_local=False, cd_header_offset=0))
    with pytest.raises(NotACheckpointError):
        records(build_raw_zip(entries))


def test_member_hidden_inside_another_members_payload():
    hidden = local_header(b"ckpt/version", b"3\n")
    entries = [*checkpoint_entries()[:2], RawEntry(b"ckpt/padding", hidden)]
    plain = build_raw_zip(entries)
    hidden_at = plain.index(hidden, plain.index(b"ckpt/padding") + 12)
    data = build_raw_zip(
        [*entries, RawEntry(b"ckpt/version", b"3\n", write_local=False, cd_header_offset=hidden_at)]
    )
    with pytest.raises(NotACheckpointError, match="overlap"):
        records(data)


def record(name: str, header_offset: int, data_start: int, size: int) -> pthzip.ZipRecord:
    return pthzip.ZipRecord(name, header_offset, data_start, size, 0)


def test_check_no_overlap():
    a = record("a", 0, 40, 100)
    b = record("b", 140, 180, 10)
    pthzip.check_no_overlap([b, a], 190)  # touching is fine, order does not matter
    with pytest.raises(NotACheckpointError, match="overlap"):
        pthzip.check_no_overlap([a, record("b", 139, 180, 10)], 500)
    with pytest.raises(NotACheckpointError, match="central directory"):
        pthzip.check_no_overlap([a, b], 189)


# -- fuzz ------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400))
def test_random_bytes_only_raise_checkpoint_errors(data):
    with contextlib.suppress(CheckpointError):
        records(b"PK\x03\x04" + data)


@settings(max_examples=300, deadline=None)
@given(
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=4),
    cut=st.integers(0, 10**6),
)
def test_damaged_zip_only_raises_checkpoint_errors(flips, cut):
    data = bytearray(build_raw_zip(checkpoint_entries()))
    for where, xor in flips:
        data[where % len(data)] ^= xor
    if cut % 3 == 0:
        data = data[: cut % len(data)]
    try:
        recs = records(bytes(data))
    except CheckpointError:
        return
    for r in recs.values():  # whatever was accepted lies inside the file
        assert 0 <= r.data_start <= r.data_end <= len(data)
