"""The zip layout of a ``torch.save`` file, read from bytes without touching the filesystem.

A ``.pth`` written by ``torch.save`` (zip format, torch >= 1.6) is a STORED zip under one top
folder: ``<top>/data.pkl``, one record ``<top>/data/<key>`` per storage, and a few small records.
chunkd needs three things from it: where each record's payload lies in the file, the CRC-32 each
payload must have, and everything that is *not* a storage payload (the residue), so that a restore
can put the file back together byte for byte.

This module is pure: it parses buffers that the caller has read (the tail of the file for the
central directory, a local header for each record). The caller decides how to read, which keeps
large files out of memory and lets the tests feed it crafted bytes.

Checks made here, each refused with a precise :mod:`chunkd.errors` class:
  * an end-of-central-directory record (zip64 included) whose offsets lie inside the file;
  * every entry STORED (torch never compresses), not encrypted, sizes equal, ranges inside the
    file and not overlapping;
  * member names under exactly one top folder, relative, with no ``..``, backslash or NUL;
  * local headers that agree with the central directory.
"""

from __future__ import annotations

import contextlib
import struct
from dataclasses import dataclass

from chunkd.errors import LegacyFormatError, NotACheckpointError, TruncatedError

_EOCD_SIG = b"PK\x05\x06"
_EOCD64_LOCATOR_SIG = b"PK\x06\x07"
_EOCD64_SIG = b"PK\x06\x06"
_CENTRAL_SIG = b"PK\x01\x02"
_LOCAL_SIG = b"PK\x03\x04"

_EOCD_SIZE = 22
_EOCD64_LOCATOR_SIZE = 20
_EOCD64_SIZE = 56
_CENTRAL_SIZE = 46
LOCAL_HEADER_SIZE = 30
_MAX_COMMENT = 0xFFFF

#: How many bytes from the end of the file hold the end-of-central-directory records, at most.
TAIL_BYTES = _EOCD_SIZE + _MAX_COMMENT + _EOCD64_LOCATOR_SIZE + _EOCD64_SIZE

#: No checkpoint has this many records (one per storage, at most the pickle reader's 50,000
#: tensors, plus a few); a central directory claiming more is hostile. Each entry costs ~200
#: bytes parsed, so this also bounds the memory one file's directory may take.
MAX_ENTRIES = 100_000
MAX_CENTRAL_DIRECTORY_BYTES = 32 << 20

_PICKLE_MAGIC = b"\x80"  # legacy torch.save starts with a pickle (protocol 2 magic)
_LEGACY_TAR_OFFSET = 257  # the even older tar format has "ustar" here


@dataclass(frozen=True, slots=True)
class ZipEntry:
    """One member of the archive, as the central directory describes it."""

    name: str
    header_offset: int
    size: int
    crc32: int


@dataclass(frozen=True, slots=True)
class ZipRecord:
    """A member with its payload located: ``[data_start, data_start + size)`` of the file."""

    name: str
    header_offset: int
    data_start: int
    size: int
    crc32: int

    @property
    def data_end(self) -> int:
        return self.data_start + self.size


@dataclass(frozen=True, slots=True)
class CentralDirectory:
    """Where the central directory lies and what it lists."""

    offset: int
    size: int
    entries: tuple[ZipEntry, ...]
    top: str


def sniff_legacy(head: bytes) -> bool:
    """True for the pre-zip ``torch.save`` formats (a bare pickle stream, or a tar archive)."""
    if head[:1] == _PICKLE_MAGIC:
        return True
    return head[_LEGACY_TAR_OFFSET : _LEGACY_TAR_OFFSET + 5] == b"ustar"


def find_end_record(tail: bytes) -> int:
    """Offset in ``tail`` of the last whole end-of-central-directory record, or -1 if none."""
    eocd_at = tail.rfind(_EOCD_SIG)
    while eocd_at >= 0 and eocd_at + _EOCD_SIZE > len(tail):
        eocd_at = tail.rfind(_EOCD_SIG, 0, eocd_at)
    return eocd_at


def read_central_directory(file_size: int, tail: bytes, read_at) -> CentralDirectory:
    """Parse the end-of-central-directory records and the central directory.

    ``tail`` holds the last ``min(file_size, TAIL_BYTES)`` bytes of the file; ``read_at(offset,
    size)`` returns exactly ``size`` bytes at ``offset`` (the caller's I/O, so this stays pure).
    """
    tail_start = file_size - len(tail)
    eocd_at = find_end_record(tail)
    if eocd_at < 0:
        raise NotACheckpointError("no zip end-of-central-directory record: not a zip checkpoint")
    (_, disk, cd_disk, n_disk, n_total, cd_size, cd_offset, comment_len) = struct.unpack_from(
        "<4sHHHHIIH", tail, eocd_at
    )
    if eocd_at + _EOCD_SIZE + comment_len != len(tail) and tail_start == 0:
        # A comment that does not run to the end of the file: trailing garbage or a false match.
        raise NotACheckpointError("zip end record does not end the file")
    if disk != 0 or cd_disk != 0 or n_disk != n_total:
        raise LegacyFormatError("multi-disk zip archives are not checkpoints")

    if 0xFFFF in (n_total,) or 0xFFFFFFFF in (cd_size, cd_offset):
        locator_at = eocd_at - _EOCD64_LOCATOR_SIZE
        if locator_at < 0 or tail[locator_at : locator_at + 4] != _EOCD64_LOCATOR_SIG:
            raise NotACheckpointError("zip64 end record expected but its locator is missing")
        (_, _, eocd64_offset, _) = struct.unpack_from("<4sIQI", tail, locator_at)
        rel = eocd64_offset - tail_start
        if not 0 <= rel <= len(tail) - _EOCD64_SIZE or tail[rel : rel + 4] != _EOCD64_SIG:
            raise NotACheckpointError("zip64 end-of-central-directory record not found")
        (_, _, _, _, _, _, n_disk64, n_total64, cd_size, cd_offset) = struct.unpack_from(
            "<4sQHHIIQQQQ", tail, rel
        )
        if n_disk64 != n_total64:
            raise LegacyFormatError("multi-disk zip archives are not checkpoints")
        n_total = n_total64

    if n_total > MAX_ENTRIES or cd_size > MAX_CENTRAL_DIRECTORY_BYTES:
        raise NotACheckpointError(f"zip central directory too large ({n_total} entries)")
    if cd_offset + cd_size > file_size:
        raise TruncatedError(
            f"zip central directory ends at {cd_offset + cd_size}, past the end of the file "
            f"({file_size} bytes)"
        )
    raw = read_at(cd_offset, cd_size)
    entries = _parse_entries(raw, n_total)
    top = _common_top(entries)
    return CentralDirectory(offset=cd_offset, size=cd_size, entries=entries, top=top)


def _parse_entries(raw: bytes, count: int) -> tuple[ZipEntry, ...]:
    entries: list[ZipEntry] = []
    pos = 0
    for _ in range(count):
        if pos + _CENTRAL_SIZE > len(raw) or raw[pos : pos + 4] != _CENTRAL_SIG:
            raise NotACheckpointError(f"corrupt zip central directory at entry {len(entries)}")
        (
            _sig,
            _made_by,
            _needed,
            flags,
            method,
            _mtime,
            _mdate,
            crc,
            csize,
            usize,
            name_len,
            extra_len,
            comment_len,
            _disk,
            _iattr,
            _eattr,
            offset,
        ) = struct.unpack_from("<4sHHHHHHIIIHHHHHII", raw, pos)
        name_start = pos + _CENTRAL_SIZE
        extra_start = name_start + name_len
        end = extra_start + extra_len + comment_len
        if end > len(raw):
            raise NotACheckpointError("corrupt zip central directory: entry runs past its end")
        name_bytes = raw[name_start:extra_start]
        extra = raw[extra_start : extra_start + extra_len]
        usize, csize, offset = _apply_zip64(extra, usize, csize, offset)
        name = _decode_name(name_bytes, flags)
        if flags & 0x1:
            raise LegacyFormatError(f"zip member {name!r} is encrypted")
        if method != 0:
            raise LegacyFormatError(
                f"zip member {name!r} is compressed (method {method}); torch.save stores members"
            )
        if csize != usize:
            raise NotACheckpointError(f"zip member {name!r}: stored sizes disagree")
        entries.append(ZipEntry(name=name, header_offset=offset, size=usize, crc32=crc))
        pos = end
    return tuple(entries)


def _apply_zip64(extra: bytes, usize: int, csize: int, offset: int) -> tuple[int, int, int]:
    """Replace 0xFFFFFFFF placeholders with the zip64 extra field's 64-bit values, in order."""
    if 0xFFFFFFFF not in (usize, csize, offset):
        return usize, csize, offset
    pos = 0
    while pos + 4 <= len(extra):
        header_id, size = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4 : pos + 4 + size]
        if header_id == 0x0001:
            values = [v[0] for v in struct.iter_unpack("<Q", body[: len(body) // 8 * 8])]
            it = iter(values)
            try:
                if usize == 0xFFFFFFFF:
                    usize = next(it)
                if csize == 0xFFFFFFFF:
                    csize = next(it)
                if offset == 0xFFFFFFFF:
                    offset = next(it)
            except StopIteration:
                raise NotACheckpointError("zip64 extra field too short") from None
            return usize, csize, offset
        pos += 4 + size
    raise NotACheckpointError("zip64 sizes announced but no zip64 extra field")


def _decode_name(raw: bytes, flags: int) -> str:
    try:
        name = raw.decode("utf-8" if flags & 0x800 else "cp437")
    except UnicodeDecodeError:
        raise NotACheckpointError("zip member name is not valid UTF-8") from None
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or "\x00" in name
        or any(part in ("", ".", "..") for part in name.split("/"))
    ):
        raise NotACheckpointError(f"unsafe zip member name {name!r}")
    return name


def _common_top(entries: tuple[ZipEntry, ...]) -> str:
    """The one top folder every member lives under (``torch.save`` writes exactly one)."""
    if not entries:
        raise NotACheckpointError("empty zip archive")
    tops = {e.name.split("/", 1)[0] for e in entries}
    if len(tops) != 1 or any("/" not in e.name for e in entries):
        raise NotACheckpointError("zip members are not under one top folder: not a checkpoint")
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise NotACheckpointError("zip archive lists a member twice")
    top = tops.pop()
    if f"{top}/data.pkl" not in names:
        raise NotACheckpointError(f"zip has no {top}/data.pkl: not a torch checkpoint")
    return top


def locate_record(entry: ZipEntry, local_header: bytes, file_size: int) -> ZipRecord:
    """Find where ``entry``'s payload starts, from the 30-byte local header read at its offset."""
    if len(local_header) < LOCAL_HEADER_SIZE:
        raise TruncatedError(f"zip member {entry.name!r}: local header past the end of the file")
    (sig, _needed, flags, method, _t, _d, _crc, _cs, _us, name_len, extra_len) = struct.unpack_from(
        "<4sHHHHHIIIHH", local_header
    )
    if sig != _LOCAL_SIG:
        raise NotACheckpointError(f"zip member {entry.name!r}: no local header at its offset")
    if method != 0 or flags & 0x1:
        raise LegacyFormatError(f"zip member {entry.name!r}: local header is not STORED")
    data_start = entry.header_offset + LOCAL_HEADER_SIZE + name_len + extra_len
    if data_start + entry.size > file_size:
        raise TruncatedError(
            f"zip member {entry.name!r} ends at {data_start + entry.size}, past the end of the "
            f"file ({file_size} bytes)"
        )
    return ZipRecord(
        name=entry.name,
        header_offset=entry.header_offset,
        data_start=data_start,
        size=entry.size,
        crc32=entry.crc32,
    )


def check_local_name(record: ZipRecord, local_name: bytes) -> None:
    """The local header must name the same member as the central directory."""
    accepted = {record.name.encode("utf-8")}
    with contextlib.suppress(UnicodeEncodeError):  # a UTF-8 name may have no cp437 spelling
        accepted.add(record.name.encode("cp437"))
    if local_name not in accepted:
        raise NotACheckpointError(
            f"zip member {record.name!r}: local header names {local_name!r} instead"
        )


def check_no_overlap(records: list[ZipRecord], cd_offset: int) -> None:
    """Payloads must not overlap each other or the central directory (zip-bomb style tricks)."""
    ordered = sorted(records, key=lambda r: r.header_offset)
    previous_end = 0
    previous_name = "<start>"
    for record in ordered:
        if record.header_offset < previous_end:
            raise NotACheckpointError(f"zip members {previous_name!r} and {record.name!r} overlap")
        previous_end = record.data_end
        previous_name = record.name
    if previous_end > cd_offset:
        raise NotACheckpointError(f"zip member {previous_name!r} overlaps the central directory")
