"""Delta chains: a chunk coded against the same flat range of the client's previous round.

Federated rounds move every weight a little, so a round coded against the round before it is far
smaller than the round on its own (issue 14: ~0.58 of the bytes for fp32 against ~0.85 for the
best self-contained codec). As video codecs do with key frames, chains are bounded: a chunk is
coded as a delta only if its base is fewer than ``KEY_INTERVAL - 1`` links from a key
(self-contained) chunk, so a restore decodes at most ``KEY_INTERVAL`` chunks per chunk.

* **Ingest** (:class:`DeltaBases`): the base of chunk *i* is chunk *i* of the previous round
  (newest by ``(run, round)``) when both describe exactly the same parts. Its raw bytes come from
  :data:`RECENT` (the raw chunks of recent ingests, bounded in bytes) or are decoded from the store
  on the calling pool thread through a reader connection of its own, never on the writer thread.
* **Retention** (:func:`promote_orphaned_deltas`): when the start of a chain is pruned, the oldest
  kept delta of that chain is re-coded as a key chunk, so the pruned bases become garbage and
  keeping N rounds with delta never costs more than keeping N rounds without.
* **Restore**: :meth:`~chunkd.store.reading.StoreReading.read_chain` reads the chain, in one read
  transaction, from the nearest key (or from a chunk in :data:`RECENT`, looked up with one atomic
  ``get``); see docs/DESIGN.md "Readers see one consistent chain".

The hash of every chunk names its raw bytes, whatever its codec or base.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from chunkd import codec
from chunkd.errors import ChunkdError
from chunkd.manifest import ChunkSpec
from chunkd.store import ChunkStore, RoundInfo

#: A key chunk at least every this many rounds of a chunk's history (chain depth < this).
KEY_INTERVAL = 4
#: Raw bytes of recently ingested chunks kept for the next round's deltas (all clients together);
#: only filled with `delta = true`. Bounded, so an idle daemon holds at most this much.
RECENT_BYTES = 128 << 20


class RecentChunks:
    """Raw bytes of recently ingested chunks by hash, each kept until the next round uses it.

    Content-addressed, so one cache serves every client safely: equal hashes are equal bytes.
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
        self._items: OrderedDict[str, tuple[bytes | bytearray, float]] = OrderedDict()
        self._bytes = 0

    def put(self, chunk_hash: str, raw: bytes | bytearray) -> None:
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

    def take(self, chunk_hash: str) -> bytes | bytearray | None:
        """The chunk, removed: the next round has used it and coded its own against it."""
        with self._lock:
            item = self._items.pop(chunk_hash, None)
            if item is None:
                return None
            self._bytes -= len(item[0])
            return item[0]

    def get(self, chunk_hash: str) -> bytes | bytearray | None:
        """The chunk, or None. The only way to read an entry: restores and the next ingest share
        this cache, and a ``take`` may come between any two calls, so a membership test and a
        read after it would race (issue 17: ``KeyError`` in 2 of 300 restores). There is
        deliberately no ``__contains__`` or ``__getitem__``."""
        with self._lock:
            item = self._items.get(chunk_hash)
            return None if item is None else item[0]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


RECENT = RecentChunks(RECENT_BYTES)


def chain_depths(bases: dict[str, str | None]) -> dict[str, int]:
    """Links from each chunk to its key chunk (0 for a key); a broken chain counts as deep."""
    depths: dict[str, int] = {}
    for start in bases:
        path = []
        chunk: str | None = start
        while chunk is not None and chunk not in depths and len(path) <= KEY_INTERVAL * 4:
            path.append(chunk)
            chunk = bases.get(chunk) if chunk in bases else None
        depth = -1 if chunk is None else depths.get(chunk, KEY_INTERVAL * 4)
        for link in reversed(path):
            depth += 1
            depths[link] = depth
    return depths


@dataclass(frozen=True, slots=True)
class DeltaBase:
    chunk_hash: str
    depth: int


class DeltaBases:
    """Chooses each new chunk's base and fetches its raw bytes (see the module docstring)."""

    def __init__(self, store: ChunkStore, round_num: int, recent: RecentChunks = RECENT) -> None:
        self._path = store.path
        self._recent = recent
        others = [v for v in store.list_rounds() if v.round_num != round_num]
        previous = max(others, key=lambda v: v.order_key, default=None)
        self._previous = (
            {ref.chunk_id: ref for ref in store.round_chunks(previous.round_num)}
            if previous is not None
            else {}
        )
        _, bases, _ = store.chunk_graph() if self._previous else (set(), {}, {})
        self._depths = chain_depths(bases)
        self._local = threading.local()
        self._readers: list[ChunkStore] = []
        self._readers_lock = threading.Lock()

    def base_for(self, spec: ChunkSpec) -> DeltaBase | None:
        """The previous round's chunk for these exact parts, if a delta on it stays in bounds."""
        ref = self._previous.get(spec.chunk_id)
        if ref is None or ref.parts_info != spec.parts_json():
            return None
        depth = self._depths.get(ref.chunk_hash)
        if depth is None or depth + 1 >= KEY_INTERVAL:
            return None
        return DeltaBase(ref.chunk_hash, depth + 1)

    def fetch(self, base: DeltaBase, size: int) -> bytes | None:
        """The base's raw bytes, checked against its hash; None if unavailable. Runs on a pool
        thread: a decode from the store uses that thread's own reader connection."""
        raw = self._recent.take(base.chunk_hash)
        if raw is not None and len(raw) == size:
            return bytes(raw) if isinstance(raw, bytearray) else raw
        try:
            raw = self._reader().read_raw_chunk(base.chunk_hash)
        except ChunkdError:
            return None
        if len(raw) != size or hashlib.sha256(raw).hexdigest() != base.chunk_hash:
            return None
        return raw

    def _reader(self) -> ChunkStore:
        reader = getattr(self._local, "reader", None)
        if reader is None:
            reader = ChunkStore.open_reader(self._path)
            self._local.reader = reader
            with self._readers_lock:
                self._readers.append(reader)
        return reader

    def close(self) -> None:
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for reader in readers:
            reader.close()


def encode_chunk(
    raw: bytes | bytearray | memoryview,
    width: int,
    compression: str,
    bases: DeltaBases | None,
    base: DeltaBase | None,
) -> tuple[str, bytes | memoryview, str | None]:
    """``(codec, stored bytes, base hash or None)`` for one chunk; runs on the pool."""
    base_raw = bases.fetch(base, len(raw)) if bases is not None and base is not None else None
    codec_name, stored = codec.encode(raw, width, compression, base_raw)
    base_hash = base.chunk_hash if base is not None and codec.is_delta(codec_name) else None
    return codec_name, stored, base_hash


# -- retention -----------------------------------------------------------------------------------


def promote_orphaned_deltas(store: ChunkStore, compression: str = "auto") -> int:
    """Re-code as key chunks the kept deltas whose base no kept round references any more.

    Run after retention removed round versions and before garbage collection: afterwards the
    pruned chain starts are dead. Returns the number of chunks re-coded.
    """
    referenced, bases, _ = store.chunk_graph()
    orphaned = [h for h in referenced if bases.get(h) is not None and bases[h] not in referenced]
    if not orphaned:
        return 0
    widths = _widths(store, set(orphaned))
    for chunk_hash in sorted(orphaned):
        raw = store.read_raw_chunk(chunk_hash)
        if hashlib.sha256(raw).hexdigest() != chunk_hash:
            continue  # damaged: leave it for verify to report; never re-code wrong bytes
        codec_name, stored = codec.encode(raw, widths.get(chunk_hash, 1), compression, None)
        store.replace_chunk_encoding(chunk_hash, codec_name, stored)
    return len(orphaned)


def _widths(store: ChunkStore, hashes: set[str]) -> dict[str, int]:
    """Each chunk's grouping width, from the parts of a kept round that references it."""
    widths: dict[str, int] = {}
    for version in store.list_versions():
        missing = hashes - widths.keys()
        if not missing:
            break
        refs = [
            r
            for r in store.round_chunks(version.round_num, _generation(version))
            if r.chunk_hash in missing
        ]
        if not refs:
            continue
        layout, _ = store.read_layout(version.round_num, _generation(version))
        itemsize = {s.name: s.itemsize for s in layout.storages}
        for ref in refs:
            pairs = [  # (nbytes, itemsize) per part, as ingest chose the width
                ((end - start) * itemsize.get(name, 1), itemsize.get(name, 1))
                for name, ranges in json.loads(ref.parts_info).items()
                for start, end, _shape in ranges
            ]
            widths[ref.chunk_hash] = codec.group_width(pairs)
    return widths


def _generation(version: RoundInfo) -> int | None:
    return None if version.current else version.generation
