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
        raw = self.decode_view()
        return raw if isinstance(raw, bytes) else bytes(raw)

    def decode_view(self) -> bytes | memoryview:
        """:meth:`decode`, without copying a plane-decoded chunk into a ``bytes`` (for a
        restore, which only writes and hashes it). The view is read-only and owns its memory.

        Byte-grouped links of one width (every ``auto`` chain) are XORed plane by plane and
        interleaved once (:func:`chunkd.codec.decode_plane_chain`); any other chain, or one that
        fails that way, is decoded link by link, which names the link that is damaged.
        """
        fast = _decode_by_planes(self.links, self.base)
        if fast is not None:
            return fast
        links = list(self.links)
        raw = self.base if self.base is not None else _decode_one(links.pop(), None)
        for link in reversed(links):
            raw = _decode_one(link, raw)
        return bytes(raw) if isinstance(raw, bytearray) else raw


def _decode_by_planes(
    links: tuple[StoredChunk, ...], base: bytes | bytearray | None
) -> memoryview | None:
    """The chain decoded plane by plane, or None where that does not apply (or fails)."""
    try:
        planes = [codec.planes_of(link.codec, link.data, link.raw_size) for link in links]
    except IntegrityError:
        return None
    first = planes[0]
    if first is None or any(
        p is None or p.width != first.width or p.raw_size != first.raw_size for p in planes
    ):
        return None
    # Every link but the last is a delta on the next; the last is a key, or a delta on ``base``.
    if not all(p.delta for p in planes[:-1]) or planes[-1].delta != (base is not None):  # type: ignore[union-attr]
        return None
    if base is not None and len(base) != first.raw_size:
        return None
    try:
        return codec.decode_plane_chain(planes, base)  # type: ignore[arg-type]
    except IntegrityError:
        return None


def _decode_one(stored: StoredChunk, base: bytes | bytearray | None) -> bytes:
    try:
        return codec.decode(stored.codec, stored.data, stored.raw_size, base)
    except IntegrityError as e:
        raise IntegrityError(f"chunk {stored.chunk_hash}: {e}") from None
