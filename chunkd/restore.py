"""Rebuild a stored round, byte for byte, into any writable binary stream.

The file is written in file order: each residue run from the round's residue, each storage's
payload from the chunks that cover it. The whole output is checked against the original file's
SHA-256 at the end; a mismatch raises :class:`~chunkd.errors.IntegrityError` naming the round and
(found by re-hashing each chunk) the chunk. Wrong bytes are never reported as a success, and the
caller (CLI, socket server) discards what was written.

What each digest proves (docs/DESIGN.md "Digests"): the whole-file SHA-256 alone proves the
output is the file that was ingested, so a restore into a file that is renamed into place only
after that check (``-o FILE``) hashes every byte once. A stream whose bytes leave before the end
(``-o -``) sets ``verify_chunks``: each chunk is checked against its SHA-256 before any of its
bytes are written, so a damaged store never sends a wrong byte, only a shorter stream.

Memory is bounded by a few chunks: chunks are read one at a time in short read transactions (a
concurrent ingest can commit between two of them), and only the last few decoded chunks are kept
for storages that start inside a chunk already read.

Both cores work: ``DECODE_WORKERS`` threads read and decode chunks ahead of the writer, a thread
hashes the whole file in order, and the caller's thread writes (sqlite3, zstd, numpy's copies,
hashlib and ``os.write`` all release the GIL). The store's connection is one, so a chunk's read
(its delta chain, in one read transaction) happens under a lock; its decode does not.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from chunkd.errors import ChunkdError, IntegrityError, NotFoundError
from chunkd.manifest import RoundLayout
from chunkd.store import ChunkRef
from chunkd.store.chains import KnownChunks


class RoundSource(Protocol):
    """What a restore reads: a :class:`~chunkd.store.ChunkStore`, or a replica's bucket."""

    def read_round(
        self, round_num: int, generation: int | None = None
    ) -> tuple[RoundLayout, bytes, list[ChunkRef]]: ...

    def read_raw_chunk(self, chunk_hash: str, known: KnownChunks | None = None) -> bytes: ...


#: Decoded chunks kept for reuse; checkpoint order equals file order in practice, so 2 suffice.
CACHE_CHUNKS = 2
#: Chunks read ahead of the one being written (decoded ones wait for their turn here).
PREFETCH_CHUNKS = 4
#: Threads reading and decoding chunks: the 2 cores chunkd's targets have. More would only
#: queue behind the store's one connection or take a core from the writer and the file hash.
DECODE_WORKERS = 2

Write = Callable[[bytes | memoryview], object]
Raw = bytes | bytearray | memoryview


#: How many client ids an "unknown client" message shows (issue 21: bounded for 10,000 clients).
KNOWN_CLIENTS_SHOWN = 20


def unknown_client_message(
    client_id: str, known: list[str], where: str, label: str = "known clients"
) -> str:
    """``no client '9' <where>; known clients: 1, 2, 10`` (issue 21: say which ids exist).

    The first :data:`KNOWN_CLIENTS_SHOWN` in natural order (numeric ids by value), then how many
    more there are, so that a typo is seen at a glance even among 10,000 clients.
    """
    ordered = sorted(known, key=lambda c: (not c.isdigit(), int(c) if c.isdigit() else 0, c))
    shown = ", ".join(ordered[:KNOWN_CLIENTS_SHOWN]) or "none"
    more = len(ordered) - KNOWN_CLIENTS_SHOWN
    tail = f" (and {more} more)" if more > 0 else ""
    return f"no client {client_id!r} {where}; {label}: {shown}{tail}"


@dataclass(frozen=True, slots=True)
class RestoreResult:
    round_num: int
    bytes_written: int
    file_sha256: str


class _ChunkReader:
    """Reads, verifies and decodes a round's chunks by index in the flat byte stream.

    Chunks are read ahead on ``worker`` (``DECODE_WORKERS`` threads), in the order the file will
    need them, so that reading and decoding chunks overlaps with writing and hashing the previous
    ones. At most ``PREFETCH_CHUNKS`` are in flight and they are taken in order. Reads share the
    store's connection, one at a time (``_read_lock``); decoding runs outside the lock.
    """

    def __init__(
        self,
        store: RoundSource,
        round_num: int,
        layout: RoundLayout,
        chunks: list[ChunkRef],
        worker: Executor,
        verify_chunks: bool = True,
        recent: KnownChunks | None = None,
    ) -> None:
        self.store = store
        self.verify_chunks = verify_chunks
        self.recent = recent
        self.round_num = round_num
        self.chunks = chunks
        self.starts = _chunk_byte_starts(round_num, layout, chunks)
        self._cache: OrderedDict[int, Raw] = OrderedDict()
        self._worker = worker
        self._upcoming = deque(self._needed_order(layout))
        self._in_flight: deque[tuple[int, Future[Raw]]] = deque()
        self._read_lock = threading.Lock()

    def _needed_order(self, layout: RoundLayout) -> list[int]:
        order: list[int] = []
        storage_starts = layout.storage_byte_starts()
        for kind, value in layout.segments:
            if kind != "s" or not layout.storages[value].nbytes:
                continue
            start = storage_starts[value]
            end = start + layout.storages[value].nbytes
            index = bisect.bisect_right(self.starts, start) - 1
            while index < len(self.chunks) and self.starts[index] < end:
                if not order or order[-1] != index:
                    order.append(index)
                index += 1
        return order

    def _load(self, index: int) -> Raw:
        ref = self.chunks[index]
        expected_size = self.starts[index + 1] - self.starts[index]
        try:
            # one atomic look-up: the next ingest may take the entry at any moment. An entry is
            # never changed once put (ingest hands its buffer over), so it is used as it is.
            cached = self.recent.get(ref.chunk_hash) if self.recent is not None else None
            raw = cached if cached is not None else self._read(ref.chunk_hash)
        except IntegrityError as e:
            raise IntegrityError(f"round {self.round_num} chunk {ref.chunk_id}: {e}") from None
        if len(raw) != expected_size or (
            self.verify_chunks and hashlib.sha256(raw).hexdigest() != ref.chunk_hash
        ):
            raise IntegrityError(
                f"round {self.round_num} chunk {ref.chunk_id} ({ref.chunk_hash[:16]}…): stored "
                "bytes do not match their SHA-256"
            )
        return raw

    def _read(self, chunk_hash: str) -> Raw:
        """The chunk's raw bytes: its chain read under the lock, decoded outside it."""
        read_chain = getattr(self.store, "read_chain", None)  # a ChunkStore (a bucket has none)
        if read_chain is None:
            with self._read_lock:  # a bucket's client is not shared between threads either
                return self.store.read_raw_chunk(chunk_hash, known=self.recent)
        with self._read_lock:
            chain = read_chain(chunk_hash, self.recent)
        if chain is None:
            raise IntegrityError(f"chunk {chunk_hash} is referenced but not stored")
        return chain.decode_view()

    def chunk(self, index: int) -> Raw:
        cached = self._cache.get(index)
        if cached is not None:
            self._cache.move_to_end(index)
            return cached
        while len(self._in_flight) < PREFETCH_CHUNKS and self._upcoming:
            upcoming = self._upcoming.popleft()
            self._in_flight.append((upcoming, self._worker.submit(self._load, upcoming)))
        if self._in_flight and self._in_flight[0][0] == index:
            raw = self._in_flight.popleft()[1].result()
        else:  # not the predicted order: read it directly (correct, just not overlapped)
            raw = self._load(index)
        self._cache[index] = raw
        if len(self._cache) > CACHE_CHUNKS:
            self._cache.popitem(last=False)
        return raw

    def write_range(self, start: int, end: int, write: Write) -> None:
        """Write flat bytes ``[start, end)``."""
        index = bisect.bisect_right(self.starts, start) - 1
        while start < end:
            chunk_start = self.starts[index]
            data = self.chunk(index)
            lo = start - chunk_start
            hi = min(end - chunk_start, len(data))
            write(memoryview(data)[lo:hi])
            start = chunk_start + hi
            index += 1


def _chunk_byte_starts(round_num: int, layout: RoundLayout, chunks: list[ChunkRef]) -> list[int]:
    """Each chunk's offset in the flat byte stream (plus the end), from the stored descriptors."""
    itemsize = {s.name: s.itemsize for s in layout.storages}
    starts = [0]
    for expected_id, ref in enumerate(chunks):
        if ref.chunk_id != expected_id:
            raise IntegrityError(f"round {round_num}: chunk {expected_id} is missing")
        try:
            parts = json.loads(ref.parts_info)
            if not isinstance(parts, dict):
                raise TypeError("not a JSON object")
            size = sum(
                (end - start) * itemsize[name]
                for name, ranges in parts.items()
                for start, end, _shape in ranges
            )
        except (ValueError, KeyError, TypeError) as e:
            raise IntegrityError(
                f"round {round_num} chunk {ref.chunk_id}: damaged parts_info ({e})"
            ) from None
        starts.append(starts[-1] + size)
    if starts[-1] != layout.flat_bytes:
        raise IntegrityError(
            f"round {round_num}: chunks cover {starts[-1]} bytes, the layout needs "
            f"{layout.flat_bytes}"
        )
    return starts


def restore_round(
    store: RoundSource,
    round_num: int,
    write: Write,
    *,
    generation: int | None = None,
    verify_chunks: bool = True,
    recent: KnownChunks | None = None,
) -> RestoreResult:
    """Write round ``round_num`` of ``store`` through ``write``; see the module docstring.

    ``generation``: an earlier version of a rewritten round (None: the current one).
    ``verify_chunks``: check each chunk's SHA-256 before writing its bytes (streams); without
    it only the whole file is checked, and a mismatch is then traced to its chunk.
    ``recent``: raw chunks at hand by hash (the ingest cache), where chains may start; None (the
    default) reads every chunk from ``store``: a restore proves what is stored, not this process's
    memory. ``delete_after_ingest`` deletes a file on the strength of such a restore, and a
    damaged chunk must fail the restore that reads it even just after its ingest.
    """
    reading = getattr(store, "reading", None)  # a ChunkStore's fairness gate (not a bucket's)
    with reading() if reading is not None else contextlib.nullcontext():
        return _restore(store, round_num, write, generation, verify_chunks, recent)


def _restore(
    store: RoundSource,
    round_num: int,
    write: Write,
    generation: int | None,
    verify_chunks: bool,
    recent: KnownChunks | None,
) -> RestoreResult:
    layout, residue, chunks = store.read_round(round_num, generation)
    try:
        with ThreadPoolExecutor(DECODE_WORKERS, thread_name_prefix="chunkd-restore") as worker:
            reader = _ChunkReader(store, round_num, layout, chunks, worker, verify_chunks, recent)
            return _write_file(reader, round_num, layout, residue, write)
    except IntegrityError:
        # The prefetch thread has stopped: the store's connection is ours alone again.
        if not _still_stored(store, round_num, generation):
            raise NotFoundError(
                f"round {round_num} was removed by retention while it was being restored"
            ) from None
        if not verify_chunks:
            _name_the_bad_chunk(store, round_num, chunks)
        raise


def _still_stored(store: RoundSource, round_num: int, generation: int | None) -> bool:
    """Whether the round version being restored is still stored (a bucket's always is).

    A reader without a lease (``restore --db`` beside a daemon) can lose its round to retention
    mid-read, and its chunks then go too: that is a round no longer stored, not a damaged store
    (docs/DESIGN.md "Readers see one consistent chain").
    """
    get_round = getattr(store, "get_round", None)
    if get_round is None:
        return True
    try:
        get_round(round_num, generation)
    except NotFoundError:
        return False
    except ChunkdError:
        return True  # cannot tell: report what was found
    return True


def _name_the_bad_chunk(store: RoundSource, round_num: int, chunks: list[ChunkRef]) -> None:
    """After a whole-file mismatch: re-hash each chunk and raise for the first that is wrong."""
    for ref in chunks:
        try:
            raw = store.read_raw_chunk(ref.chunk_hash)
        except IntegrityError as e:
            raise IntegrityError(f"round {round_num} chunk {ref.chunk_id}: {e}") from None
        if hashlib.sha256(raw).hexdigest() != ref.chunk_hash:
            raise IntegrityError(
                f"round {round_num} chunk {ref.chunk_id} ({ref.chunk_hash[:16]}…): stored "
                "bytes do not match their SHA-256"
            )


def _write_file(
    reader: _ChunkReader, round_num: int, layout: RoundLayout, residue: bytes, write: Write
) -> RestoreResult:
    """Write the segments in file order; the whole-file SHA-256 runs on its own worker thread,
    in order, a few pieces behind the writes (the pieces are immutable, so sharing is safe)."""
    storage_starts = layout.storage_byte_starts()
    file_hash = hashlib.sha256()
    hashed: deque[Future[None]] = deque()
    written = 0

    def emit(data: Raw) -> None:
        nonlocal written
        hashed.append(hasher.submit(file_hash.update, data))
        write(data)
        written += len(data)
        while len(hashed) > PREFETCH_CHUNKS:
            hashed.popleft().result()

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunkd-restore-hash") as hasher:
        _emit_segments(reader, layout, residue, storage_starts, emit)
        while hashed:
            hashed.popleft().result()

    digest = file_hash.hexdigest()
    if written != layout.file_size or digest != layout.file_sha256:
        raise IntegrityError(
            f"round {round_num}: rebuilt file ({written} bytes, sha256 {digest[:16]}…) does not "
            f"match the ingested file ({layout.file_size} bytes, {layout.file_sha256[:16]}…)"
        )
    return RestoreResult(round_num, written, digest)


def _emit_segments(
    reader: _ChunkReader,
    layout: RoundLayout,
    residue: bytes,
    storage_starts: list[int],
    emit: Write,
) -> None:
    residue_pos = 0
    for kind, value in layout.segments:
        if kind == "r":
            emit(memoryview(residue)[residue_pos : residue_pos + value])
            residue_pos += value
        else:
            start = storage_starts[value]
            reader.write_range(start, start + layout.storages[value].nbytes, emit)
