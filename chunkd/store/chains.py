"""Delta chains as a reader holds them: the links of one chunk, read from one snapshot.

Pure values and decoding, no I/O: :class:`~chunkd.store.reading.StoreReading` reads the links
(in one read transaction, docs/DESIGN.md "Readers see one consistent chain") and hands them here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from chunkd import codec
from chunkd.errors import IntegrityError
from chunkd.store.records import StoredChunk


class KnownChunks(Protocol):
    """Raw chunks already at hand, by hash (the ingest's recent-chunk cache, or a dict).

    One atomic ``get`` and nothing else: the cache is shared with ingest threads that take
    entries at any moment, so a membership test followed by a read would race (issue 17).
    """

    def get(self, chunk_hash: str, /) -> bytes | bytearray | None: ...


@dataclass(frozen=True, slots=True)
class Chain:
    """A chunk's stored form and its links down to a key chunk, read from one snapshot.

    ``links[0]`` is the chunk, each next one the base of the one before; ``base`` is the raw
    bytes of the last link's base when a chunk at hand (``known``) ended the walk early.
    """

    links: tuple[StoredChunk, ...]
    base: bytes | bytearray | None

    def decode(self) -> bytes:
        """The first link's raw bytes. Memory: the stored forms and two decoded chunks."""
        links = list(self.links)
        raw = self.base if self.base is not None else _decode_one(links.pop(), None)
        for link in reversed(links):
            raw = _decode_one(link, raw)
        return bytes(raw) if isinstance(raw, bytearray) else raw


def _decode_one(stored: StoredChunk, base: bytes | bytearray | None) -> bytes:
    try:
        return codec.decode(stored.codec, stored.data, stored.raw_size, base)
    except IntegrityError as e:
        raise IntegrityError(f"chunk {stored.chunk_hash}: {e}") from None
