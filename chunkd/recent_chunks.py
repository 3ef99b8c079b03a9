"""The recent-chunk cache: raw bytes of the chunks just ingested, kept for the next round.

The link step (:mod:`chunkd.deltas`) codes the previous round against the new one and needs both
rounds' raw bytes; decoding them back out of the database would cost a read and a decode per
chunk. So ingest puts each chunk's raw bytes here as it hashes it, the link step takes them, and
a restore of a just-ingested round may start its chains here too.

Separate from the chain logic because it is a different job with its own rules: bounded memory
shared by every client and thread (a lock, a clock for staleness), and who may see an entry
(one database never reads another's bytes, issue 19). The delta code only asks it for bytes.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

from chunkd.store import ChunkStore

#: Raw bytes of recently ingested chunks kept for the link step (all clients together); only
#: filled with `delta = true`. Bounded, so an idle daemon holds at most this much; the daemon sets
#: it from ``delta_cache``.
RECENT_BYTES = 64 << 20


class RecentChunks:
    """Raw bytes of recently ingested chunks, each kept until the next round uses it.

    One cache serves every client, but each database sees only its own entries: the daemon
    reads through :meth:`of`, which keys every entry by the database as well as the hash. A hash
    alone is no proof of holding the bytes: a tenant who controls its own database (the default
    ``db_path`` is in its client directory) could list another tenant's chunk hash in a round,
    and the link step would then code that round against the other tenant's cached bytes, handing
    them over (issue 19). Keyed per database, a chunk comes back only to the database whose ingest
    put it there, which holds it.

    A round is read in the order the next round will need it, so plain LRU would evict exactly
    the chunks needed next whenever a model is larger than the cache (every lookup a miss).
    Instead an entry leaves when the next round takes it (:meth:`take`) or once it is older than
    ``stale_s``; a chunk that finds no room is simply not kept, so a model larger than the cache
    still finds its first ``max_bytes`` in it.
    """

    def __init__(self, max_bytes: int, stale_s: float = 600.0) -> None:
        self.max_bytes = max_bytes
        self.stale_s = stale_s
        self._lock = threading.Lock()
        self._items: OrderedDict[Hashable, tuple[bytes | bytearray, float]] = OrderedDict()
        self._bytes = 0

    def of(self, store: ChunkStore) -> StoreChunks:
        """The entries of ``store``'s database only, by chunk hash (what ingest, link and
        restore use)."""
        return StoreChunks(self, str(store.path))

    def put(self, chunk_hash: Hashable, raw: bytes | bytearray) -> None:
        if len(raw) > self.max_bytes:
            return
        now = time.monotonic()
        with self._lock:
            old = self._items.pop(chunk_hash, None)
            if old is not None:
                self._bytes -= len(old[0])
            while self._bytes + len(raw) > self.max_bytes and self._items:
                oldest_hash, (oldest, since) = next(iter(self._items.items()))
                if now - since < self.stale_s:
                    return  # full of chunks still to be used: keep those, not this one
                del self._items[oldest_hash]
                self._bytes -= len(oldest)
            self._items[chunk_hash] = (raw, now)
            self._bytes += len(raw)

    def take(self, chunk_hash: Hashable) -> bytes | bytearray | None:
        """The chunk, removed: the next round has used it and coded its own against it."""
        with self._lock:
            item = self._items.pop(chunk_hash, None)
            if item is None:
                return None
            self._bytes -= len(item[0])
            return item[0]

    def get(self, chunk_hash: Hashable) -> bytes | bytearray | None:
        """The chunk, or None. The only way to read an entry: restores and the next ingest share
        this cache, and a ``take`` may come between any two calls, so a membership test and a
        read after it would race (issue 17: ``KeyError`` in 2 of 300 restores). There is
        deliberately no ``__contains__`` or ``__getitem__``."""
        with self._lock:
            item = self._items.get(chunk_hash)
            return None if item is None else item[0]

    def resize(self, max_bytes: int) -> None:
        """Bound the cache to ``max_bytes`` from now on (the daemon's ``delta_cache``); entries
        over it go, oldest first."""
        with self._lock:
            self.max_bytes = max_bytes
            while self._bytes > max_bytes and self._items:
                _, (oldest, _since) = self._items.popitem(last=False)
                self._bytes -= len(oldest)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


@dataclass(frozen=True, slots=True)
class StoreChunks:
    """One database's view of a :class:`RecentChunks`: its entries, by chunk hash."""

    cache: RecentChunks
    database: str

    def put(self, chunk_hash: str, raw: bytes | bytearray) -> None:
        self.cache.put((self.database, chunk_hash), raw)

    def take(self, chunk_hash: str) -> bytes | bytearray | None:
        return self.cache.take((self.database, chunk_hash))

    def get(self, chunk_hash: str) -> bytes | bytearray | None:
        return self.cache.get((self.database, chunk_hash))


RECENT = RecentChunks(RECENT_BYTES)
