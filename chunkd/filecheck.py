"""The whole file's SHA-256 and each storage's CRC-32, from the bytes as ingest streams them.

Ingest reads each storage's bytes once, in flat order, to chunk and hash them; this checker sees
the same bytes on one worker thread, so the file's own checksums cost no second read when flat
order is file order (as ``torch.save`` writes).
"""

from __future__ import annotations

import hashlib
import zlib

from chunkd.checkpoint import ParsedCheckpoint, read_exact
from chunkd.errors import CrcMismatchError


class FileChecker:
    """Each storage's CRC-32, and the whole file's SHA-256, from the bytes as they stream by.

    Runs on one worker thread, so it sees the pieces in the order they were read. CRCs need only
    that: each storage's pieces arrive in flat order. The file hash is fed storage bytes in file
    order, filling the gaps with residue. When flat (checkpoint) order is also file order, which
    is how ``torch.save`` writes, the file is hashed on the way at no extra read; otherwise the fed
    bytes are ignored and :meth:`finish` hashes the file in one more sequential pass.
    """

    def __init__(self, parsed: ParsedCheckpoint) -> None:
        self._crcs = [0] * len(parsed.storages)
        self._hash = hashlib.sha256()
        self._parsed = parsed
        self._pos = 0  # file offset hashed so far
        self._residue_pos = 0
        self._residue_runs = self._residue_runs_by_offset()
        self._in_order = True

    def _residue_runs_by_offset(self) -> list[tuple[int, int]]:
        runs, pos = [], 0
        storages = self._parsed.storages
        for kind, value in self._parsed.segments:
            if kind == "r":
                runs.append((pos, value))
                pos += value
            else:
                pos += storages[value].nbytes
        return runs

    def _feed_residue_until(self, offset: int) -> None:
        residue = self._parsed.residue
        while self._residue_runs and self._residue_runs[0][0] < offset:
            start, length = self._residue_runs.pop(0)
            if start != self._pos:
                self._in_order = False
                return
            self._hash.update(residue[self._residue_pos : self._residue_pos + length])
            self._residue_pos += length
            self._pos += length

    def feed_all(self, pieces: list[tuple[int, int, memoryview]]) -> None:
        """``(storage index, file offset, bytes)`` for each part of one chunk."""
        for slot, offset, data in pieces:
            self._crcs[slot] = zlib.crc32(data, self._crcs[slot])
            self.feed(offset, data)

    def check_crcs(self) -> None:
        parsed = self._parsed
        for slot, expected, got in zip(
            parsed.storages, parsed.storage_crcs, self._crcs, strict=True
        ):
            if expected != got:
                raise CrcMismatchError(
                    f"storage {slot.key!r} ({slot.name}) fails its CRC-32 check: the file is "
                    "damaged or still being written"
                )

    def feed(self, offset: int, data: memoryview) -> None:
        if not self._in_order:
            return
        self._feed_residue_until(offset)
        if offset != self._pos:
            self._in_order = False
            return
        self._hash.update(data)
        self._pos += len(data)

    def finish(self, fd: int) -> str:
        size = self._parsed.file_size
        if self._in_order:
            self._feed_residue_until(size + 1)
        if self._in_order and self._pos == size:
            return self._hash.hexdigest()
        whole = hashlib.sha256()
        for offset in range(0, size, 8 << 20):
            whole.update(read_exact(fd, offset, min(8 << 20, size - offset)))
        return whole.hexdigest()
