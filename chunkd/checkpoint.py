"""Open a ``.pth`` file and learn its layout: storages in flat order, residue, file segments.

This is the thin I/O layer over the pure parsers :mod:`chunkd.pthzip` and
:mod:`chunkd.pickle_scan`. It reads with ``pread`` on a file descriptor and never maps the file:
a client may truncate or rewrite its checkpoint while chunkd reads it, and a truncated mapping
would kill the daemon with SIGBUS, whereas a short read is just an error.

Everything that is not a storage payload is residue. Residue is small (zip headers, ``data.pkl``,
a few tiny records), is read whole, and its records are CRC-checked here. Storage payloads are
large and are CRC-checked by the caller as it streams them (see :mod:`chunkd.ingest`).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from chunkd import pthzip
from chunkd.errors import (
    CrcMismatchError,
    LegacyFormatError,
    NotACheckpointError,
    TruncatedError,
)
from chunkd.manifest import Segment, StorageSlot
from chunkd.pickle_scan import DTYPE_ITEMSIZE, ScannedPickle, scan_pickle
from chunkd.tensor_names import name_storages

#: Residue beyond this is not a checkpoint but something hiding in one: it is read whole and
#: kept in memory (data.pkl is at most 64 MiB, zip headers ~100 bytes per storage).
MAX_RESIDUE_BYTES = 128 << 20

#: ``read_at(offset, size)``: exactly ``size`` bytes of the file at ``offset``, or an error.
ReadAt = Callable[[int, int], bytes]


@dataclass(frozen=True, slots=True)
class ParsedCheckpoint:
    """A checkpoint's structure, read and validated, with its residue in memory."""

    file_size: int
    top: str
    storages: tuple[StorageSlot, ...]
    #: CRC-32 each storage's payload must have, in flat order
    storage_crcs: tuple[int, ...]
    segments: tuple[Segment, ...]
    residue: bytes
    scanned: ScannedPickle


def read_exact(fd: int, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset``, or :class:`TruncatedError` if the file is shorter now."""
    chunks = []
    remaining = size
    while remaining > 0:
        data = os.pread(fd, min(remaining, 64 << 20), offset + size - remaining)
        if not data:
            raise TruncatedError(f"file ends before byte {offset + size}")
        chunks.append(data)
        remaining -= len(data)
    return b"".join(chunks) if len(chunks) != 1 else chunks[0]


def read_into(fd: int, offset: int, view: memoryview) -> None:
    """Fill ``view`` from ``offset`` (no intermediate copy), or raise :class:`TruncatedError`."""
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise TruncatedError(f"file ends before byte {offset + len(view)}")
        done += n


def parse_checkpoint(fd: int, file_size: int) -> ParsedCheckpoint:
    """Validate the zip structure and ``data.pkl`` of the file open at ``fd``."""
    return parse_structure(lambda offset, size: read_exact(fd, offset, size), file_size)


def parse_structure(read_at: ReadAt, file_size: int) -> ParsedCheckpoint:
    """:func:`parse_checkpoint` over any random-access reader; reads residue bytes only.

    Storage payloads are never read here, so export can parse a stored round from its residue
    alone, without rebuilding the file.
    """
    if file_size == 0:
        raise NotACheckpointError("empty file")
    head = read_at(0, min(file_size, 512))
    if not head.startswith(b"PK\x03\x04"):
        if pthzip.sniff_legacy(head):
            raise LegacyFormatError(
                "legacy (pre-1.6, non-zip) torch.save format; re-save with a current torch"
            )
        raise NotACheckpointError("not a zip file (no local header at offset 0)")
    tail_len = min(file_size, pthzip.TAIL_BYTES)
    tail = read_at(file_size - tail_len, tail_len)
    if pthzip.find_end_record(tail) < 0:
        # It starts like a zip but has no end record, which torch.save writes last.
        raise TruncatedError(
            f"zip checkpoint of {file_size} bytes has no end-of-central-directory record: "
            "truncated or still being written"
        )
    cd = pthzip.read_central_directory(file_size, tail, read_at)

    records: dict[str, pthzip.ZipRecord] = {}
    for entry in cd.entries:
        header = read_at(entry.header_offset, pthzip.LOCAL_HEADER_SIZE)
        record = pthzip.locate_record(entry, header, file_size)
        name_len = int.from_bytes(header[26:28], "little")
        pthzip.check_local_name(record, read_at(entry.header_offset + 30, name_len))
        records[entry.name] = record
    pthzip.check_no_overlap(list(records.values()), cd.offset)

    top = cd.top
    pkl = records[f"{top}/data.pkl"]
    pkl_bytes = read_at(pkl.data_start, pkl.size)
    _check_crc(pkl, pkl_bytes)
    byteorder = records.get(f"{top}/byteorder")
    if byteorder is not None:
        order = read_at(byteorder.data_start, byteorder.size)
        _check_crc(byteorder, order)
        if order != b"little":
            raise LegacyFormatError(f"checkpoint byte order is {order!r}; only little-endian")

    scanned = scan_pickle(pkl_bytes)
    storages: list[StorageSlot] = []
    crcs: list[int] = []
    for named in name_storages(scanned):
        record = records.get(f"{top}/data/{named.storage.key}")
        if record is None:
            raise NotACheckpointError(
                f"data.pkl names storage {named.storage.key!r}, not in the zip"
            )
        if record.size != named.storage.nbytes:
            raise NotACheckpointError(
                f"storage {named.storage.key!r} record holds {record.size} bytes, data.pkl says "
                f"{named.storage.nbytes}"
            )
        storages.append(
            StorageSlot(
                name=named.name,
                key=named.storage.key,
                dtype=named.dtype,
                itemsize=DTYPE_ITEMSIZE[named.dtype],
                numel=named.numel,
                shape=named.shape,
                file_offset=record.data_start,
            )
        )
        crcs.append(record.crc32)

    segments, residue = _read_residue(read_at, file_size, storages)
    streamed = {f"{top}/data/{s.key}" for s in storages} | {pkl.name}
    for record in records.values():
        if record.name not in streamed:
            _check_crc(record, read_at(record.data_start, record.size))
    return ParsedCheckpoint(
        file_size=file_size,
        top=top,
        storages=tuple(storages),
        storage_crcs=tuple(crcs),
        segments=segments,
        residue=residue,
        scanned=scanned,
    )


def _check_crc(record: pthzip.ZipRecord, data: bytes) -> None:
    if zlib.crc32(data) != record.crc32:
        raise CrcMismatchError(f"zip member {record.name!r} fails its CRC-32 check")


def _read_residue(
    read_at: ReadAt, file_size: int, storages: list[StorageSlot]
) -> tuple[tuple[Segment, ...], bytes]:
    """File segments in file order, and the residue bytes between storage payloads."""
    order = sorted(
        (i for i, s in enumerate(storages) if s.nbytes), key=lambda i: storages[i].file_offset
    )
    segments: list[Segment] = []
    parts: list[bytes] = []
    pos = 0
    total = 0
    for i in order:
        start = storages[i].file_offset
        if start > pos:
            segments.append(("r", start - pos))
            parts.append(read_at(pos, start - pos))
            total += start - pos
        segments.append(("s", i))
        pos = start + storages[i].nbytes
        if total > MAX_RESIDUE_BYTES:
            raise NotACheckpointError("checkpoint holds too many non-tensor bytes")
    if file_size > pos:
        segments.append(("r", file_size - pos))
        parts.append(read_at(pos, file_size - pos))
    # Empty storages have no bytes in the file but still belong to the layout.
    segments.extend(("s", i) for i, s in enumerate(storages) if not s.nbytes)
    return tuple(segments), b"".join(parts)
