"""The seed's flat-index chunking: storages -> one flat index -> near-equal chunks.

The storages of a checkpoint, each once, in checkpoint order, flattened and concatenated, form
the flat index (elements, not bytes). It is cut into ``chunk_num`` chunks whose element counts
differ by at most one; when that would make a chunk larger than ``max_chunk_bytes``, there are
more chunks (``ceil(total_bytes / max_chunk_bytes)``), and a chunk that still exceeds the cap
because it covers wider elements than average is split evenly again. A checkpoint with fewer
elements than chunks gets one chunk per element; one with no elements gets none.

The boundaries depend only on the storages' sizes, so two rounds of the same model cut the same
way, and an unchanged range hashes to the same chunk: that is where deduplication comes from.

Pure: sizes in, :class:`~chunkd.manifest.ChunkSpec` out.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from chunkd.manifest import ChunkSpec, Part, StorageSlot

#: The widest element torch saves (complex128); ``max_chunk_bytes`` must allow one element.
MAX_ITEMSIZE = 16


class _FlatIndex:
    """Prefix sums over the storages, to map element offsets to storages and bytes."""

    def __init__(self, storages: Sequence[StorageSlot]) -> None:
        self.storages = storages
        self.elem_starts: list[int] = []
        self.byte_starts: list[int] = []
        elems = nbytes = 0
        for s in storages:
            self.elem_starts.append(elems)
            self.byte_starts.append(nbytes)
            elems += s.numel
            nbytes += s.nbytes
        self.total_elems = elems
        self.total_bytes = nbytes

    def byte_at(self, elem: int) -> int:
        """Byte offset in the flat byte stream of flat element ``elem`` (``total`` allowed)."""
        if elem >= self.total_elems:
            return self.total_bytes
        i = bisect.bisect_right(self.elem_starts, elem) - 1
        while self.storages[i].numel == 0:  # empty storages share their start with the next
            i += 1
        return self.byte_starts[i] + (elem - self.elem_starts[i]) * self.storages[i].itemsize

    def parts(self, start: int, end: int) -> tuple[Part, ...]:
        out: list[Part] = []
        i = bisect.bisect_right(self.elem_starts, start) - 1
        while i < len(self.storages) and self.elem_starts[i] < end:
            s = self.storages[i]
            s0 = self.elem_starts[i]
            lo, hi = max(start, s0), min(end, s0 + s.numel)
            if lo < hi:
                out.append(Part(s.name, lo - s0, hi - s0, s.shape, s.itemsize))
            i += 1
        return tuple(out)


def plan_chunks(
    storages: Sequence[StorageSlot], chunk_num: int, max_chunk_bytes: int
) -> list[ChunkSpec]:
    """Cut the flat index of ``storages`` into chunks (see the module docstring)."""
    if chunk_num < 1:
        raise ValueError("chunk_num must be >= 1")
    if max_chunk_bytes < MAX_ITEMSIZE:
        raise ValueError(f"max_chunk_bytes must be >= {MAX_ITEMSIZE}")
    index = _FlatIndex(storages)
    total = index.total_elems
    if total == 0:
        return []
    wanted = max(chunk_num, -(-index.total_bytes // max_chunk_bytes))
    n = min(wanted, total)
    ranges: list[tuple[int, int]] = []
    for i in range(n):
        start, end = i * total // n, (i + 1) * total // n
        ranges.extend(_split_to_cap(index, start, end, max_chunk_bytes))
    chunks = []
    for chunk_id, (start, end) in enumerate(ranges):
        chunks.append(
            ChunkSpec(
                chunk_id=chunk_id,
                parts=index.parts(start, end),
                flat_size=end - start,
                byte_start=index.byte_at(start),
                byte_end=index.byte_at(end),
            )
        )
    return chunks


def _split_to_cap(index: _FlatIndex, start: int, end: int, cap: int) -> list[tuple[int, int]]:
    """``[start, end)`` as is, or split evenly into the fewest pieces that each fit ``cap``."""
    nbytes = index.byte_at(end) - index.byte_at(start)
    if nbytes <= cap:
        return [(start, end)]
    count = end - start
    k = -(-nbytes // cap)
    while True:
        pieces = [(start + j * count // k, start + (j + 1) * count // k) for j in range(k)]
        if all(index.byte_at(b) - index.byte_at(a) <= cap for a, b in pieces):
            return pieces
        k += 1
