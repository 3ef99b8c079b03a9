"""Delta chains: older rounds coded against the round after them (reverse deltas).

Federated rounds move every weight a little, so a round coded against its neighbour is far
smaller than the round on its own (on a real FedAvg trajectory a key chunk costs ~0.84 of its raw
bytes, a delta ~0.75). The chain runs backwards in time, as in rdiff-backup: the newest round is
stored whole (key chunks) and each older round as deltas against the round that followed it.

* **Ingest** stores every new chunk as a key chunk (:func:`encode_chunk`), so the round is
  complete and restorable the moment it commits, and keeps the raw bytes in :data:`RECENT`
  (:mod:`chunkd.recent_chunks`, re-exported here with :class:`RecentChunks`).
* **Link** (:func:`link_previous_round`), after the commit and only when the new round is the
  newest: each chunk of the round that was newest before is re-coded as a delta against the new
  round's chunk of exactly the same parts, one atomic row update at a time. A crash in between
  leaves a key chunk that is merely larger: nothing is ever lost or half-written.
* **Restore** of the newest round, the common case, decodes key chunks only; an older round
  decodes one link per round it is behind the next key. :data:`KEY_INTERVAL` bounds that: a chunk
  that already carries ``KEY_INTERVAL - 2`` older links stays a key chunk.
* **Retention** drops the oldest rounds: the leaves of the chains, so nothing is re-coded and a
  pruned round frees its deltas. Where a kept delta's base does go (``forget`` of a newer round,
  an earlier store's forward chains), :func:`promote_orphaned_deltas` re-codes it as a key chunk
  before garbage collection, so keeping N rounds with delta never costs more than without.

Why reverse (measured in ``benchmarks/chain_shapes.py``; docs/DESIGN.md "Reverse delta
chains"): XOR is symmetric, so a delta costs the same in either direction, and what differs is
where the key chunks fall. Forward chains put the key at the oldest kept round, which retention
removes first: every prune re-coded a key (a chain decode and an encode per chunk) and ``latest``
decoded up to three links. Reverse chains keep the one key where it is read most, and retention
only deletes.

The hash of every chunk names its raw bytes, whatever its codec or base.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass

from chunkd import codec
from chunkd.errors import ChunkdError
from chunkd.recent_chunks import RECENT, RecentChunks, StoreChunks
from chunkd.store import BATCH_BYTES, ChunkStore, RoundInfo

__all__ = [
    "KEY_INTERVAL",
    "LINK_WINDOW",
    "RECENT",
    "LinkResult",
    "RecentChunks",
    "StoreChunks",
    "chain_depths",
    "encode_chunk",
    "link_previous_round",
    "promote_orphaned_deltas",
]

#: A key chunk at least every this many rounds of a chunk's history (chain depth < this): an
#: old round decodes at most ``KEY_INTERVAL - 1`` deltas; the newest decodes none.
KEY_INTERVAL = 8


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


def encode_chunk(
    raw: bytes | bytearray | memoryview, width: int, compression: str
) -> tuple[str, bytes | memoryview, str | None]:
    """``(codec, stored bytes, None)`` for a new chunk: always a key chunk (see the module
    docstring); runs on the pool."""
    codec_name, stored = codec.encode(raw, width, compression, None)
    return codec_name, stored, None


@dataclass(frozen=True, slots=True)
class LinkResult:
    """What :func:`link_previous_round` did: chunks re-coded, their stored bytes before/after."""

    linked: int = 0
    bytes_before: int = 0
    bytes_after: int = 0


@dataclass(frozen=True, slots=True)
class _Link:
    older: str  # the previous round's chunk, a key chunk now
    newer: str  # the new round's chunk of the same parts, its base from now on
    width: int
    stored_size: int


def link_previous_round(
    store: ChunkStore,
    round_num: int,
    compression: str,
    pool: Executor,
    recent: RecentChunks = RECENT,
    alive: Callable[[], None] | None = None,
) -> LinkResult:
    """Re-code the chunks of the round that was newest before ``round_num`` (just committed) as
    deltas against ``round_num``'s chunks; nothing if ``round_num`` is not the newest now.

    Re-codes are written in transactions of about ``BATCH_BYTES``; each only replaces stored
    forms, never a hash, so readers (one snapshot per chain) and a crash at any point see a
    complete store. Encoding runs on ``pool``; the database is only touched on the calling
    (writer) thread. ``alive`` is called after each transaction (the daemon's liveness: a large
    round takes seconds).
    """
    links = _plan_links(store, round_num)
    if not links:
        return LinkResult()
    at_hand = recent.of(store)
    linked = before = after = 0
    window: deque[tuple[_Link, Future[tuple[str, bytes | memoryview] | None]]] = deque()
    batch: list[tuple[str, str, bytes | memoryview, str | None]] = []
    batch_bytes = 0

    def flush() -> None:
        nonlocal batch_bytes
        if batch:
            store.replace_chunk_encodings(batch)
            batch.clear()
            batch_bytes = 0
            if alive is not None:
                alive()

    def finish(link: _Link, encoded: Future[tuple[str, bytes | memoryview] | None]) -> None:
        nonlocal linked, before, after, batch_bytes
        result = encoded.result()
        if result is None:
            return
        codec_name, stored = result
        batch.append((link.older, codec_name, stored, link.newer))
        batch_bytes += len(stored)
        linked += 1
        before += link.stored_size
        after += len(stored)
        if batch_bytes >= BATCH_BYTES:
            flush()

    try:
        for link in links:
            older = _raw(store, link.older, at_hand, take=True)
            newer = _raw(store, link.newer, at_hand, take=False)
            if older is None or newer is None or len(older) != len(newer):
                continue
            window.append((link, pool.submit(_encode_link, older, newer, link, compression)))
            while len(window) > LINK_WINDOW:
                finish(*window.popleft())
        while window:
            finish(*window.popleft())
        flush()
    finally:
        for _link, task in window:
            task.cancel()
    return LinkResult(linked, before, after)


#: Chunks being re-coded at once: enough to keep two cores busy, few enough to bound memory
#: (each holds two raw chunks and a coded one, at most ``max_chunk_bytes`` each).
LINK_WINDOW = 4


def _plan_links(store: ChunkStore, round_num: int) -> list[_Link]:
    """Which chunks of the previous newest round to re-code, and against what (the rules in
    docs/DESIGN.md "Reverse delta chains"). Indexed look-ups only: the cost is the round's
    chunks, not the rounds stored."""
    newest_two = store.newest_versions(2)
    if len(newest_two) < 2 or not newest_two[0].current or newest_two[0].round_num != round_num:
        return []
    newest, previous = newest_two
    newer_refs = {ref.chunk_id: ref for ref in store.round_chunks(newest.round_num)}
    newest_hashes = {ref.chunk_hash for ref in newer_refs.values()}
    pairs = {}
    for ref in store.round_chunks(previous.round_num, _generation(previous)):
        newer = newer_refs.get(ref.chunk_id)
        if (
            newer is not None
            and newer.parts_info == ref.parts_info
            and ref.chunk_hash not in newest_hashes  # the newest round reads it: keep it a key
        ):
            pairs.setdefault(ref.chunk_hash, newer.chunk_hash)
    if not pairs:
        return []
    forms = store.chunk_forms(set(pairs) | set(pairs.values()))
    candidates = {
        older: newer
        for older, newer in pairs.items()
        if older in forms
        and forms[older][0] is None  # a key chunk (an older store's forward delta stays)
        and newer in forms
        and forms[newer][0] is None  # only ever onto a key chunk: no cycles
    }
    tails = _tails(store, set(candidates))
    candidates = {o: n for o, n in candidates.items() if tails[o] + 2 <= KEY_INTERVAL}
    if not candidates:
        return []
    widths = _widths_in(store, previous, set(candidates))
    return [
        _Link(older, newer, widths.get(older, 1), forms[older][1])
        for older, newer in candidates.items()
    ]


def _tails(store: ChunkStore, chunks: set[str]) -> dict[str, int]:
    """Links hanging below each of ``chunks`` at most (0: no delta is coded against it), found
    level by level through the ``base_hash`` index; counted as too deep past ``KEY_INTERVAL``."""
    tails = dict.fromkeys(chunks, 0)
    root_of = {c: c for c in chunks}  # a chunk of the current level -> the candidate above it
    level = set(chunks)
    for depth in range(1, KEY_INTERVAL + 1):
        below = store.deltas_on(level)
        if not below:
            break
        next_root = {}
        for chunk, base in below:
            root = root_of[base]
            tails[root] = max(tails[root], depth)
            next_root[chunk] = root
        root_of, level = next_root, set(next_root)
    return tails


def _encode_link(
    older: bytes | bytearray, newer: bytes | bytearray, link: _Link, compression: str
) -> tuple[str, bytes | memoryview] | None:
    """The older chunk as a delta on the newer, or None where that does not make it smaller."""
    codec_name, stored = codec.encode(older, link.width, compression, newer)
    if not codec.is_delta(codec_name) or len(stored) >= link.stored_size:
        return None
    return codec_name, stored


def _raw(
    store: ChunkStore, chunk_hash: str, recent: StoreChunks, *, take: bool
) -> bytes | bytearray | None:
    """A chunk's raw bytes: from ``recent`` (this store's entries) when there, else decoded and
    checked."""
    raw = recent.take(chunk_hash) if take else recent.get(chunk_hash)
    if raw is not None:
        return raw
    try:
        raw = store.read_raw_chunk(chunk_hash)
    except ChunkdError:
        return None
    return raw if hashlib.sha256(raw).hexdigest() == chunk_hash else None


# -- retention -----------------------------------------------------------------------------------


def promote_orphaned_deltas(store: ChunkStore) -> int:
    """Re-code as key chunks the kept deltas whose base no kept round references any more.

    Run after retention or ``forget`` removed round versions and before garbage collection:
    afterwards the bases are dead. Each is re-coded in its own codec family (``max`` stays
    pcodec). Returns the number of chunks re-coded.
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
        compression = codec.compression_of(store.read_chunk(chunk_hash).codec)
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
        widths.update(_widths_in(store, version, missing))
    return widths


def _widths_in(store: ChunkStore, version: RoundInfo, hashes: set[str]) -> dict[str, int]:
    """The grouping width of those of ``hashes`` that ``version`` references, as ingest chose."""
    refs = [
        r
        for r in store.round_chunks(version.round_num, _generation(version))
        if r.chunk_hash in hashes
    ]
    if not refs:
        return {}
    layout, _ = store.read_layout(version.round_num, _generation(version))
    itemsize = {s.name: s.itemsize for s in layout.storages}
    widths: dict[str, int] = {}
    for ref in refs:
        pairs = [  # (nbytes, itemsize) per part
            ((end - start) * itemsize.get(name, 1), itemsize.get(name, 1))
            for name, ranges in json.loads(ref.parts_info).items()
            for start, end, _shape in ranges
        ]
        widths[ref.chunk_hash] = codec.group_width(pairs)
    return widths


def _generation(version: RoundInfo) -> int | None:
    return None if version.current else version.generation
