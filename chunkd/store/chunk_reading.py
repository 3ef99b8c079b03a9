"""The chunk queries of a store: stored forms, delta chains read from one snapshot, the chunk graph.

Mixed into :class:`~chunkd.store.reading.StoreReading` (and so into
:class:`~chunkd.store.core.ChunkStore`). Separate from the round queries because its one hard rule
is its own: a chain is read in one read transaction (docs/DESIGN.md "Readers see one consistent
chain"), since retention re-codes links and garbage collection removes bases between two
statements. Reading happens here; decoding is :mod:`chunkd.store.chains`' (pure), and happens
after the transaction ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

from chunkd.errors import IntegrityError
from chunkd.store.chains import Chain, KnownChunks
from chunkd.store.records import StoredChunk

#: A delta chain longer than this is damage (ingest starts a key chunk well before).
MAX_CHAIN = 64


class ChunkReading:
    """Chunk queries; what they need of the store is named below (:class:`StoreReading` has it)."""

    path: Path
    #: One read transaction (:meth:`~chunkd.store.reading.StoreReading.snapshot`).
    snapshot: Callable[[], contextlib.AbstractContextManager[None]]
    #: One statement's rows, sqlite3 errors wrapped (``StoreReading._query``).
    _query: Callable[..., list[tuple]]

    def read_chunk(self, chunk_hash: str) -> StoredChunk:
        """The chunk's stored form (one statement; see :meth:`read_chain` for a whole chain)."""
        rows = self._chunk_rows(chunk_hash)
        if not rows:
            raise IntegrityError(f"chunk {chunk_hash} is referenced but not stored")
        return StoredChunk(chunk_hash, *rows[0])

    def read_raw_chunk(self, chunk_hash: str, known: KnownChunks | None = None) -> bytes:
        """A chunk's raw bytes, decoded (its delta chain applied); not hash-checked. The chain is
        read in one read transaction (:meth:`read_chain`). ``known``: raw bytes already at hand,
        by hash, where a chain may stop early."""
        chain = self.read_chain(chunk_hash, known)
        if chain is None:
            raise IntegrityError(f"chunk {chunk_hash} is referenced but not stored")
        return chain.decode()

    def read_chain(self, chunk_hash: str, known: KnownChunks | None = None) -> Chain | None:
        """The chunk's stored form and every link down to its key chunk (or to a chunk in
        ``known``), all from one read transaction; None if the chunk is not stored.

        One snapshot is what makes a chain consistent: retention re-codes a kept delta as a key
        chunk and garbage collection then removes its base (docs/DESIGN.md "Readers see one
        consistent chain"), so links read in separate transactions can name a base that is gone
        by the time it is read. Within one snapshot every link's base is stored, or the store is
        damaged. The transaction holds at most ``KEY_INTERVAL`` chunk rows' reads; decoding
        happens after it ends.
        """
        with self.snapshot():
            rows = self._chunk_rows(chunk_hash)
            if not rows:
                return None
            return self._links(StoredChunk(chunk_hash, *rows[0]), known)

    def decode_chunk(self, stored: StoredChunk, known: KnownChunks | None = None) -> bytes:
        """Decode ``stored``, applying its delta chain from the nearest key chunk (or from a
        chunk already decoded in ``known``, hash -> raw bytes). Memory: the chain's stored forms
        and two decoded chunks.

        ``stored`` may have been read many statements ago (``verify`` reads chunks in batches):
        since then retention may have re-coded it or a link of its chain as a key chunk and
        removed the bases nothing needs any more. Its links are read in one snapshot; if that
        fails, the chunk is read again from the top, chain and all, in one snapshot, and what
        fails then is damage (or a chunk no longer stored).
        """
        try:
            with self.snapshot():
                chain = self._links(stored, known)
            return chain.decode()
        except IntegrityError:
            if stored.base_hash is None:
                raise  # a key chunk decodes alone, whenever it was read: its bytes are bad
        return self.read_raw_chunk(stored.chunk_hash, known)

    def _chunk_rows(self, chunk_hash: str) -> list[tuple]:
        return self._query(
            "SELECT codec, data, raw_size, base_hash FROM chunk_data WHERE chunk_hash = ?",
            (chunk_hash,),
        )

    def _links(self, top: StoredChunk, known: KnownChunks | None) -> Chain:
        """``top``'s chain; the caller holds the read transaction the links come from."""
        links = [top]
        while (base_hash := links[-1].base_hash) is not None:
            base = known.get(base_hash) if known is not None else None  # one atomic look-up
            if base is not None:
                return Chain(tuple(links), base)
            if len(links) > MAX_CHAIN:
                raise IntegrityError(f"chunk {top.chunk_hash}: delta chain is too long")
            links.append(self.read_chunk(base_hash))
        return Chain(tuple(links), None)

    def chunk_base(self, chunk_hash: str) -> str | None:
        """The key chunk at the start of ``chunk_hash``'s chain (itself for a key chunk)."""
        rows = self._query("SELECT base_hash FROM chunk_info WHERE chunk_hash = ?", (chunk_hash,))
        if not rows:
            return None
        return rows[0][0] or chunk_hash

    def chunk_depth(self, chunk_hash: str) -> int | None:
        """Delta links from ``chunk_hash`` to its key chunk (0 = a key); None if not stored."""
        depth = 0
        current: str | None = chunk_hash
        while True:
            rows = self._query("SELECT base_hash FROM chunk_info WHERE chunk_hash = ?", (current,))
            if not rows:
                return None if depth == 0 else depth
            current = rows[0][0]
            if current is None:
                return depth
            depth += 1
            if depth > MAX_CHAIN:
                return depth

    def iter_chunks(self) -> Iterator[StoredChunk]:
        """Every stored chunk, one at a time (bounded memory), in rowid order."""
        last = 0
        while True:
            rows = self._query(
                "SELECT id, chunk_hash, codec, data, raw_size, base_hash FROM chunk_data"
                " WHERE id > ? ORDER BY id LIMIT 16",
                (last,),
            )
            if not rows:
                return
            for row_id, chunk_hash, codec_name, data, raw_size, base_hash in rows:
                last = row_id
                yield StoredChunk(chunk_hash, codec_name, data, raw_size, base_hash)

    def has_chunk(self, chunk_hash: str) -> bool:
        return bool(self._query("SELECT 1 FROM chunk_data WHERE chunk_hash = ?", (chunk_hash,)))

    def chunk_graph(self) -> tuple[set[str], dict[str, str | None], dict[str, int]]:
        """What garbage collection decides on: referenced hashes, each chunk's base, its size."""
        referenced = {
            r[0]
            for r in self._query(
                "SELECT chunk_hash FROM chunk_metadata UNION SELECT chunk_hash FROM"
                " round_history_chunks"
            )
        }
        bases: dict[str, str | None] = {}
        sizes: dict[str, int] = {}
        for chunk_hash, base_hash, stored_size in self._query(
            "SELECT chunk_hash, base_hash, stored_size FROM chunk_info"
        ):
            bases[chunk_hash] = base_hash
            sizes[chunk_hash] = stored_size
        return referenced, bases, sizes

    def chunk_forms(self, hashes: Collection[str]) -> dict[str, tuple[str | None, int]]:
        """``hash -> (base hash or None, stored size)`` for those of ``hashes`` that are stored."""
        forms: dict[str, tuple[str | None, int]] = {}
        for batch in _batches(list(hashes)):
            marks = ",".join("?" * len(batch))
            for chunk_hash, base_hash, stored_size in self._query(
                "SELECT chunk_hash, base_hash, stored_size FROM chunk_info"  # noqa: S608
                f" WHERE chunk_hash IN ({marks})",
                tuple(batch),
            ):
                forms[chunk_hash] = (base_hash, stored_size)
        return forms

    def deltas_on(self, bases: Collection[str]) -> list[tuple[str, str]]:
        """``(chunk, base)`` for every stored delta coded against one of ``bases`` (indexed)."""
        found: list[tuple[str, str]] = []
        for batch in _batches(list(bases)):
            marks = ",".join("?" * len(batch))
            found.extend(
                self._query(
                    "SELECT chunk_hash, base_hash FROM chunk_info"  # noqa: S608
                    f" WHERE base_hash IN ({marks})",
                    tuple(batch),
                )
            )
        return found


def _batches(items: list[str], size: int = 500) -> Iterator[list[str]]:
    """``items`` in slices small enough for one statement's parameters."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
