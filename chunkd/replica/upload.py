"""Upload one stored round: its chunks (and their delta bases) first, its manifest last.

Write order is the replica's one invariant (restic's "packs, then index, then snapshot"): a
manifest is written only after every chunk object it names, bases included, is in the bucket, so
no reader ever finds a manifest pointing at a missing chunk. A delta's base is written before the
delta. A crash anywhere leaves at most chunk objects that nothing references yet; the chunk sweep
(:mod:`chunkd.replica.prune`) removes them once they are older than its grace period.

Memory is bounded: chunks are read from the database one at a time on the calling thread (the
store is not shared between threads) and at most :data:`UPLOAD_CONCURRENCY` are in flight.
Bandwidth is bounded by a :class:`RateLimiter` shared by all uploads.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone

import zstandard

from chunkd.errors import IntegrityError
from chunkd.replica.bounds import MAX_MANIFEST_BYTES
from chunkd.replica.bucket import Bucket, ReplicaError
from chunkd.replica.layout import (
    MAX_CHAIN_DEPTH,
    ChunkForm,
    ManifestChunk,
    RoundManifest,
    chunk_key,
    manifest_key,
)
from chunkd.store import ChunkStore, StoredChunk

#: Chunk PUTs (and HEADs) in flight at once.
UPLOAD_CONCURRENCY = 4
#: Chunks remembered as present in the bucket (about 300 bytes each: ~30 MB at most).
PRESENT_CACHE_ENTRIES = 100_000


class RateLimiter:
    """A token bucket: at most ``bytes_per_s`` on average, bursts up to one second's worth."""

    def __init__(self, bytes_per_s: int) -> None:
        self.bytes_per_s = bytes_per_s
        self._lock = threading.Lock()
        self._tokens = float(bytes_per_s)
        self._stamp = time.monotonic()

    def acquire(self, nbytes: int) -> None:
        """Wait until ``nbytes`` may be sent; 0 = unlimited."""
        if self.bytes_per_s <= 0:
            return
        with self._lock:  # one waiter at a time keeps the order fair
            now = time.monotonic()
            self._tokens = min(
                float(self.bytes_per_s), self._tokens + (now - self._stamp) * self.bytes_per_s
            )
            self._stamp = now
            self._tokens -= nbytes
            wait = -self._tokens / self.bytes_per_s if self._tokens < 0 else 0.0
            if wait > 0:
                time.sleep(wait)


class PresentCache:
    """Chunks known to be in the bucket, with their form there; an LRU bounded in size.

    Valid only while no chunk sweep runs: :mod:`chunkd.replica.prune` rewrites the bucket's
    gc-epoch object before sweeping, and :meth:`check_epoch` clears the cache when it changed.
    """

    def __init__(self, capacity: int = PRESENT_CACHE_ENTRIES) -> None:
        self._forms: OrderedDict[str, ChunkForm] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()
        self.epoch: str | None = None

    def check_epoch(self, epoch: str) -> None:
        with self._lock:
            if epoch != self.epoch:
                self._forms.clear()
                self.epoch = epoch

    def get(self, chunk_hash: str) -> ChunkForm | None:
        with self._lock:
            form = self._forms.get(chunk_hash)
            if form is not None:
                self._forms.move_to_end(chunk_hash)
            return form

    def add(self, form: ChunkForm) -> None:
        with self._lock:
            self._forms[form.chunk_hash] = form
            self._forms.move_to_end(form.chunk_hash)
            while len(self._forms) > self._capacity:
                self._forms.popitem(last=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class UploadResult:
    client_id: str
    round_num: int
    file_sha256: str
    file_size: int
    run: int
    generation: int
    chunks: int
    chunks_uploaded: int
    bytes_uploaded: int  # chunk bodies and the manifest, as sent
    duration_s: float

    def log_fields(self) -> dict[str, object]:
        return {
            "client": self.client_id,
            "round": self.round_num,
            "run": self.run,
            "generation": self.generation,
            "sha256": self.file_sha256,
            "bytes_in": self.file_size,
            "chunks": self.chunks,
            "chunks_new": self.chunks_uploaded,
            "bytes_uploaded": self.bytes_uploaded,
            "duration_ms": round(self.duration_s * 1000, 1),
        }


def stored_form(stored: StoredChunk) -> ChunkForm:
    raw_size = stored.raw_size if stored.raw_size >= 0 else len(stored.data)
    return ChunkForm(stored.chunk_hash, stored.codec, raw_size, stored.base_hash)


class _RoundUpload:
    """The state of one round's upload; lives on the calling thread (plus PUT workers)."""

    def __init__(
        self,
        bucket: Bucket,
        store: ChunkStore,
        cache: PresentCache,
        limiter: RateLimiter,
        workers: ThreadPoolExecutor,
        keepalive: Callable[[], None],
    ) -> None:
        self.bucket = bucket
        self.store = store
        self.cache = cache
        self.limiter = limiter
        self.workers = workers
        self.keepalive = keepalive
        self.forms: dict[str, ChunkForm] = {}
        self.puts: dict[str, Future[int]] = {}
        self.in_flight: deque[Future[int]] = deque()
        self.sent_bytes = 0
        self.sent_chunks = 0

    def probe(self, hashes: list[str]) -> None:
        """HEAD, in parallel, every chunk not known to be present."""
        unknown = []
        for h in hashes:
            form = self.cache.get(h)
            if form is not None:
                self.forms[h] = form
            else:
                unknown.append(h)
        heads = self.workers.map(lambda h: self.bucket.head(chunk_key(self.bucket.url, h)), unknown)
        for h, info in zip(unknown, heads, strict=True):
            if info is not None:
                form = ChunkForm.from_metadata(h, info.metadata)
                self.forms[h] = form
                self.cache.add(form)

    def ensure(self, chunk_hash: str, depth: int = 0) -> ChunkForm:
        """Make ``chunk_hash`` (and its base chain) present; its form in the bucket."""
        if depth > MAX_CHAIN_DEPTH:
            raise IntegrityError(f"chunk {chunk_hash}: delta chain longer than {MAX_CHAIN_DEPTH}")
        form = self.forms.get(chunk_hash)
        if form is None and chunk_hash not in self.puts:
            info = self.bucket.head(chunk_key(self.bucket.url, chunk_hash))
            if info is not None:
                form = ChunkForm.from_metadata(chunk_hash, info.metadata)
                self.forms[chunk_hash] = form
                self.cache.add(form)
        if form is not None:
            if form.base is not None:
                self.ensure(form.base, depth + 1)
            return form
        stored = self.store.read_chunk(chunk_hash)
        form = stored_form(stored)
        self.forms[chunk_hash] = form
        if form.base is not None:
            self.ensure(form.base, depth + 1)
            base_put = self.puts.get(form.base)
            if base_put is not None:
                base_put.result()  # the base is in the bucket before its delta
        self._submit(form, stored.data)
        return form

    def _submit(self, form: ChunkForm, data: bytes) -> None:
        while len(self.in_flight) >= UPLOAD_CONCURRENCY:
            self.in_flight.popleft().result()
        self.keepalive()
        future = self.workers.submit(self._put, form, data)
        self.puts[form.chunk_hash] = future
        self.in_flight.append(future)

    def _put(self, form: ChunkForm, data: bytes) -> int:
        """Bytes sent; -1 if another host's object was already there (its form may differ)."""
        self.limiter.acquire(len(data))
        key = chunk_key(self.bucket.url, form.chunk_hash)
        if self.bucket.put(key, data, metadata=form.metadata(), only_if_absent=True):
            self.cache.add(form)
            return len(data)
        return -1

    def finish(self) -> None:
        """Wait for every PUT (raising the first failure); adopt the form of raced objects."""
        while self.puts:
            puts, self.puts = self.puts, {}
            for chunk_hash, future in puts.items():
                sent = future.result()
                if sent >= 0:
                    self.sent_bytes += sent
                    self.sent_chunks += 1
                    continue
                info = self.bucket.head(chunk_key(self.bucket.url, chunk_hash))
                if info is None:
                    raise ReplicaError(f"chunk {chunk_hash}: refused as present, then missing")
                form = ChunkForm.from_metadata(chunk_hash, info.metadata)
                self.forms[chunk_hash] = form
                self.cache.add(form)
                if form.base is not None:
                    self.ensure(form.base)
            self.in_flight.clear()

    def closure(self, hashes: list[str]) -> list[ChunkForm]:
        """The bases (recursively) that ``hashes`` need and that are not among them."""
        own, bases, seen = set(hashes), [], set()
        todo = [self.forms[h].base for h in hashes if self.forms[h].base]
        while todo:
            h = todo.pop()
            if h is None or h in own or h in seen:
                continue
            seen.add(h)
            bases.append(self.forms[h])
            todo.append(self.forms[h].base)
        return bases


def upload_round(
    bucket: Bucket,
    store: ChunkStore,
    *,
    host: str,
    client_id: str,
    round_num: int,
    cache: PresentCache,
    limiter: RateLimiter,
    workers: ThreadPoolExecutor,
    keepalive: Callable[[], None] = lambda: None,
) -> UploadResult:
    """Upload the current version of round ``round_num`` of ``store``; see the module docstring.

    The manifest replaces any earlier version of the round in the bucket and records the
    version's run and generation (the order). Raises NotFoundError if the round is not (or no
    longer) stored, ReplicaError if the bucket fails; nothing is then visible in the bucket for
    this round beyond chunk objects.
    """
    started = time.monotonic()
    info = store.get_round(round_num)
    # that version, even if a rewrite makes it an earlier generation meanwhile: the manifest
    # never pairs one version's run with another's bytes (the next comparison sends the new one)
    layout, residue, refs = store.read_round(round_num, info.generation)
    hashes = list(dict.fromkeys(ref.chunk_hash for ref in refs))
    up = _RoundUpload(bucket, store, cache, limiter, workers, keepalive)
    up.probe(hashes)
    for h in hashes:
        up.ensure(h)
    up.finish()
    manifest = RoundManifest(
        host=host,
        client_id=client_id,
        round_num=round_num,
        layout=layout,
        residue_zstd=zstandard.ZstdCompressor(level=10).compress(residue),
        chunks=tuple(
            ManifestChunk(
                r.chunk_id, r.chunk_hash, r.parts_info, r.flat_size, up.forms[r.chunk_hash]
            )
            for r in refs
        ),
        bases=tuple(up.closure(hashes)),
        source_path=info.source_path,
        created_at=str(info.created_at),
        uploaded_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        run=info.run,
        generation=info.generation,
    )
    body = manifest.to_json()
    if len(body) > MAX_MANIFEST_BYTES:  # no chunkd would read it back (replica.bounds)
        raise ReplicaError(
            f"round {round_num}: its manifest is {len(body)} bytes, over the replica's cap of "
            f"{MAX_MANIFEST_BYTES}; use a larger max_chunk_bytes for a model this size"
        )
    limiter.acquire(len(body))
    keepalive()
    bucket.put(
        manifest_key(bucket.url, host, client_id, round_num),
        body,
        metadata=manifest.metadata(),
        content_type="application/json",
    )
    return UploadResult(
        client_id=client_id,
        round_num=round_num,
        file_sha256=layout.file_sha256,
        file_size=layout.file_size,
        run=info.run,
        generation=info.generation,
        chunks=len(refs),
        chunks_uploaded=up.sent_chunks,
        bytes_uploaded=up.sent_bytes + len(body),
        duration_s=time.monotonic() - started,
    )
