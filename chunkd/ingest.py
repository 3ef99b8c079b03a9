"""Ingest one checkpoint file into one client's store.

One file, synchronously; the daemon's lane and ``chunkd ingest --db`` both call
:func:`ingest_file`. The steps:

1. open the file and ``fstat`` it; a file already taken with this path, size and mtime is skipped;
2. parse the zip and ``data.pkl`` (:mod:`chunkd.checkpoint`) and choose the round number;
3. plan the chunks (:mod:`chunkd.flatindex`);
4. stream the chunks in flat order with bounded memory: ``pread`` each chunk's parts into one
   buffer, update each storage's CRC-32, feed the whole-file SHA-256 on a worker thread (in file
   order), hash the chunk on the pool, and store the chunk bytes that are new;
5. check every CRC-32 and that the file did not change while read; only then commit the round.

Any failure before the commit undoes the chunk rows this ingest added
(:meth:`~chunkd.store.RoundWriter.abort`), so a rejected file leaves the database as it was.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import re
import stat
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from chunkd import codec, rounds
from chunkd.checkpoint import ParsedCheckpoint, parse_checkpoint, read_exact, read_into
from chunkd.deltas import RECENT, encode_chunk, link_previous_round
from chunkd.errors import (
    FileChangedError,
    NotACheckpointError,
    NotFoundError,
    RoundConflictError,
)
from chunkd.filecheck import FileChecker
from chunkd.flatindex import plan_chunks
from chunkd.manifest import ChunkSpec, RoundLayout
from chunkd.store import ChunkStore, FileIdentity, SourceRecord

#: Chunks read ahead of the one being stored; memory is about this many chunks.
WINDOW = 4

#: A file this small is checked (CRC-32s, whole-file SHA-256) on the writer's own thread, and
#: without a caller's pool also hashed and encoded there: for a few KiB, starting three threads
#: per file and a GIL hand-off per future cost more than the work (issue 20: 2 KB checkpoints).
#: Bigger files keep the pipeline; a caller's pool (the daemon's) is always used.
INLINE_MAX_BYTES = 1 << 20

OUTCOME_INGESTED = "ingested"
OUTCOME_REPLACED = "replaced"
OUTCOME_DUPLICATE = "duplicate"
OUTCOME_SEEN = "seen"  # path, size and mtime already taken: not even read

#: ``progress(bytes_done, bytes_total)``: called from the writer's thread after each chunk is
#: stored, so a daemon can prove liveness (watchdog) and report long ingests; must be cheap.
Progress = Callable[[int, int], None]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class IngestOptions:
    chunk_num: int = 10
    max_chunk_bytes: int = 1 << 20
    compression: str = "auto"
    delta: bool = True
    round_regex: re.Pattern[str] = re.compile(rounds.DEFAULT_ROUND_REGEX)


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What one ingest did; the fields of the ``checkpoint.ingested`` log line."""

    outcome: str
    path: str
    round_num: int | None
    bytes_in: int
    chunks: int
    chunks_new: int
    bytes_new: int
    file_sha256: str
    duration_ms: float
    #: the round's tensor bytes (its chunks' raw size) and how many of them were new
    tensor_bytes: int = 0
    tensor_bytes_new: int = 0
    #: for a rewritten round: the version it superseded (now an earlier generation)
    generation: int = 0
    previous_sha256: str | None = None
    previous_path: str | None = None
    #: the link step (chunkd.deltas): the previous round's chunks re-coded as deltas on this one,
    #: the stored bytes that saved, and how long it took (after the round was committed)
    linked_chunks: int = 0
    linked_saved_bytes: int = 0
    link_ms: float = 0.0

    @property
    def dedup_ratio(self) -> float:
        """Share of this round's tensor bytes that were already stored: 0.0 = all new, 1.0 = none.

        A share rather than "x:1" so that it stays finite for a round that adds nothing.
        """
        if not self.tensor_bytes:
            return 1.0
        return round(1 - self.tensor_bytes_new / self.tensor_bytes, 4)

    @property
    def mb_per_s(self) -> float:
        return round(self.bytes_in / 1e6 / (self.duration_ms / 1e3), 1) if self.duration_ms else 0.0

    def log_fields(self) -> dict[str, object]:
        return {
            "round": self.round_num,
            "path": self.path,
            "bytes_in": self.bytes_in,
            "chunks": self.chunks,
            "chunks_new": self.chunks_new,
            "bytes_new": self.bytes_new,
            "dedup_ratio": self.dedup_ratio,
            "duration_ms": round(self.duration_ms, 1),
            "mb_per_s": self.mb_per_s,
            "sha256": self.file_sha256,
            **(
                {"generation": self.generation, "previous_sha256": self.previous_sha256}
                if self.previous_sha256
                else {}
            ),
            **(
                {
                    "delta_linked": self.linked_chunks,
                    "delta_saved": self.linked_saved_bytes,
                    "link_ms": round(self.link_ms, 1),
                }
                if self.linked_chunks
                else {}
            ),
        }


def ingest_file(
    path: str | os.PathLike[str],
    store: ChunkStore,
    options: IngestOptions,
    *,
    round_num: int | None = None,
    pool: Executor | None = None,
    fd: int | None = None,
    progress: Progress | None = None,
) -> IngestResult:
    """Ingest ``path`` into ``store`` (opened as the writer). See the module docstring.

    ``fd``: the file already opened by the caller (e.g. resolved beneath the client directory
    without following links); it stays open and the caller's. ``path`` then only names the
    file in the store and the logs.
    """
    started = time.perf_counter()
    source = str(Path(path).absolute())
    owns_fd = fd is None
    if fd is None:
        fd = _open_checkpoint(path)
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise NotACheckpointError(f"{source} is not a regular file")
        identity = FileIdentity.of(before)
        seen = store.find_source(source, identity)
        if seen is None and round_num is None:
            seen = _same_content_as_taken(store, source, identity, fd)
        if seen is not None and round_num is None:
            return IngestResult(
                OUTCOME_SEEN,
                source,
                seen.round_num,
                before.st_size,
                0,
                0,
                0,
                seen.file_sha256 or "",
                _ms_since(started),
            )
        parsed = parse_checkpoint(fd, before.st_size)
        named = round_num
        if named is None:
            named = rounds.round_from_name(Path(source).name, options.round_regex)
        if named is None:
            named = rounds.round_from_fields(parsed.scanned.root)
        # With no number in the name or the file, the round is the next in sequence; then a
        # file equal to a stored round (a touch of an overwritten checkpoint.pth) is that round.
        target = (
            named if named is not None else rounds.choose_round(None, None, store.highest_round())
        )
        # a different file claiming a stored round is refused before anything is written
        if round_num is None:
            _refuse_conflict(store, target, source, fd, before.st_size)
        specs = plan_chunks(parsed.storages, options.chunk_num, options.max_chunk_bytes)
        inline = before.st_size <= INLINE_MAX_BYTES
        own_pool = pool is None and not inline
        workers: Executor = pool or (
            InlineExecutor()
            if inline
            else ThreadPoolExecutor(max_workers=2, thread_name_prefix="chunkd-hash")
        )
        try:
            result = _stream_round(
                fd,
                before,
                parsed,
                specs,
                target,
                named is None,
                store,
                options,
                workers,
                source,
                started,
                progress,
            )
            if options.delta and result.outcome in (OUTCOME_INGESTED, OUTCOME_REPLACED):
                result = _link(store, result, options, workers, progress)
        finally:
            if own_pool:
                workers.shutdown(wait=True)
        if result.outcome == OUTCOME_DUPLICATE:
            store.record_source(
                SourceRecord(source, identity, result.file_sha256, result.round_num, result.outcome)
            )
        return result
    finally:
        if owns_fd:
            os.close(fd)


def _stream_round(
    fd: int,
    before: os.stat_result,
    parsed: ParsedCheckpoint,
    specs: list[ChunkSpec],
    round_num: int,
    sequential: bool,
    store: ChunkStore,
    options: IngestOptions,
    pool: Executor,
    source: str,
    started: float,
    progress: Progress | None = None,
) -> IngestResult:
    """Stream the chunks through a small pipeline, then commit the round.

    The main thread only reads and writes the database (the one thing that must stay on the
    writer's thread); everything else overlaps with it: chunk SHA-256 and the codec on ``pool``,
    the whole-file SHA-256 and the CRC-32s on a sequential worker that sees the bytes in order.
    """
    writer = store.begin_round(size_hint=parsed.file_size)
    file_check = FileChecker(parsed)
    sequential_worker: Executor = (
        InlineExecutor()  # in file order anyway: the writer's thread feeds it chunk by chunk
        if parsed.file_size <= INLINE_MAX_BYTES
        else ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunkd-filehash")
    )
    slot_of = {s.name: i for i, s in enumerate(parsed.storages)}
    metadata: list[tuple[int, str, str, int]] = []
    hashing: deque[tuple[ChunkSpec, bytearray, Future[str], Future[None]]] = deque()
    encoding: deque[tuple[str, int, Future[tuple[str, bytes | memoryview, str | None]]]] = deque()
    seen_hashes: set[str] = set()
    recent = RECENT.of(store)
    encodes = options.compression != "none" or options.delta
    total_bytes = sum(spec.nbytes for spec in specs)
    done_bytes = 0

    def after_hash(spec: ChunkSpec, buf: bytearray, digest: Future[str], fed: Future[None]) -> None:
        chunk_hash = digest.result()
        fed.result()  # the file checker is done with ``buf`` too: memory stays bounded
        metadata.append((spec.chunk_id, chunk_hash, spec.parts_json(), spec.flat_size))
        if options.delta:
            recent.put(chunk_hash, buf)  # for the link step, without a decode
        if chunk_hash in seen_hashes or store.has_chunk(chunk_hash):
            return
        seen_hashes.add(chunk_hash)
        if not encodes:
            writer.add_chunk(chunk_hash, codec.CODEC_RAW, buf, len(buf))
            return
        width = codec.group_width(spec.itemsizes())  # the width most of its bytes have
        encoded = pool.submit(encode_chunk, buf, width, options.compression)
        encoding.append((chunk_hash, len(buf), encoded))

    def store_encoded(
        chunk_hash: str,
        raw_size: int,
        encoded: Future[tuple[str, bytes | memoryview, str | None]],
    ) -> None:
        codec_name, stored, base_hash = encoded.result()
        writer.add_chunk(chunk_hash, codec_name, stored, raw_size, base_hash)

    try:
        for spec in specs:
            buf = bytearray(spec.nbytes)
            view = memoryview(buf)
            pos = 0
            pieces: list[tuple[int, int, memoryview]] = []
            for part in spec.parts:
                i = slot_of[part.name]
                slot = parsed.storages[i]
                piece = view[pos : pos + part.nbytes]
                file_offset = slot.file_offset + part.flat_start * slot.itemsize
                read_into(fd, file_offset, piece)
                pieces.append((i, file_offset, piece))
                pos += part.nbytes
            fed = sequential_worker.submit(file_check.feed_all, pieces)
            hashing.append((spec, buf, pool.submit(_sha256_hex, view), fed))
            while len(hashing) > WINDOW:
                after_hash(*hashing.popleft())
            while len(encoding) > WINDOW:
                store_encoded(*encoding.popleft())
            done_bytes += spec.nbytes
            if progress is not None:
                progress(done_bytes, total_bytes)
        while hashing:
            after_hash(*hashing.popleft())
        while encoding:
            store_encoded(*encoding.popleft())
        file_sha256 = sequential_worker.submit(file_check.finish, fd).result()
        file_check.check_crcs()
        after = os.fstat(fd)
        if FileIdentity.of(after) != FileIdentity.of(before):
            raise FileChangedError(f"{source} changed while it was read")

        same_round = _round_with_same_file(store, round_num, sequential, file_sha256)
        if same_round is not None:
            writer.abort()
            return IngestResult(
                OUTCOME_DUPLICATE,
                source,
                same_round,
                parsed.file_size,
                len(specs),
                0,
                0,
                file_sha256,
                _ms_since(started),
                layout_bytes(parsed),
                0,
            )
        layout = RoundLayout(
            file_size=parsed.file_size,
            file_sha256=file_sha256,
            storages=parsed.storages,
            segments=parsed.segments,
        )
        committed = writer.commit(
            round_num=round_num,
            layout=layout,
            residue=parsed.residue,
            chunks=metadata,
            source=SourceRecord(
                source, FileIdentity.of(before), file_sha256, round_num, OUTCOME_INGESTED
            ),
        )
    except BaseException:
        writer.abort()
        raise
    finally:
        sequential_worker.shutdown(wait=True)
    previous = committed.superseded
    return IngestResult(
        OUTCOME_REPLACED if previous is not None else OUTCOME_INGESTED,
        source,
        round_num,
        parsed.file_size,
        len(specs),
        writer.new_chunks,
        writer.new_bytes,
        file_sha256,
        _ms_since(started),
        layout.flat_bytes,
        writer.new_raw_bytes,
        committed.generation,
        previous.file_sha256 if previous else None,
        previous.source_path if previous else None,
    )


def _link(
    store: ChunkStore,
    result: IngestResult,
    options: IngestOptions,
    pool: Executor,
    progress: Progress | None,
) -> IngestResult:
    """The link step after a committed round (chunkd.deltas): the round before it becomes
    deltas against it. The round is already safe; this only makes older rounds smaller."""
    if result.round_num is None:
        return result
    started = time.perf_counter()
    total = result.tensor_bytes
    alive = (lambda: progress(total, total)) if progress is not None else None
    linked = link_previous_round(store, result.round_num, options.compression, pool, alive=alive)
    if not linked.linked:
        return result
    return dataclasses.replace(
        result,
        linked_chunks=linked.linked,
        linked_saved_bytes=linked.bytes_before - linked.bytes_after,
        link_ms=_ms_since(started),
    )


def layout_bytes(parsed: ParsedCheckpoint) -> int:
    return sum(s.nbytes for s in parsed.storages)


def _open_checkpoint(path: str | os.PathLike[str]) -> int:
    """Open without following a final symlink: a link could point anywhere, outside every root."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotACheckpointError(
                f"{path} is a symbolic link; checkpoints are taken only as regular files"
            ) from None
        raise


def _round_with_same_file(
    store: ChunkStore, round_num: int, sequential: bool, file_sha256: str
) -> int | None:
    """The stored round this file would merely repeat, if any (docs/SPEC.md, "Rounds")."""
    if sequential:
        return store.round_with_sha(file_sha256)
    try:
        existing = store.get_round(round_num)
    except LookupError:
        return None
    return round_num if existing.file_sha256 == file_sha256 else None


def _refuse_conflict(store: ChunkStore, round_num: int, source: str, fd: int, size: int) -> None:
    """docs/SPEC.md "Rounds": new content for a stored round is a new generation only when it
    comes from the same path, or when an operator names the round (``--round``). Any other file
    claiming the round is refused, with both paths and hashes, before anything is written; a
    copy of the stored file (same SHA-256) goes on and is then a duplicate."""
    try:
        existing = store.get_round(round_num)
    except NotFoundError:
        return
    if existing.source_path in (None, source):
        return
    sha256 = _file_sha256(fd, size)
    if sha256 == existing.file_sha256:
        return
    raise RoundConflictError(
        f"round {round_num} is already stored from {existing.source_path} "
        f"(sha256 {existing.file_sha256}); {source} (sha256 {sha256}) claims the same round and "
        f"is not stored. To keep it under another number: chunkd ingest {source} --client ID "
        "--round N"
    )


def _file_sha256(fd: int, size: int) -> str:
    digest = hashlib.sha256()
    for offset in range(0, size, 8 << 20):
        digest.update(read_exact(fd, offset, min(8 << 20, size - offset)))
    return digest.hexdigest()


def _same_content_as_taken(
    store: ChunkStore, source: str, identity: FileIdentity, fd: int
) -> SourceRecord | None:
    """A file whose metadata alone changed (``chmod``, ``chown``, ``touch -c`` of the ctime) is
    the version already taken: same size and mtime, and, read once to be sure, the same SHA-256.
    Without this a pruned round would come back after a ``chmod -R`` of the client directory."""
    taken = store.source_of(source)
    if (
        taken is None
        or taken.file_sha256 is None
        or taken.identity.size != identity.size
        or taken.identity.mtime_ns != identity.mtime_ns
    ):
        return None
    if _file_sha256(fd, identity.size) != taken.file_sha256:
        return None
    seen = SourceRecord(source, identity, taken.file_sha256, taken.round_num, taken.outcome)
    store.record_source(seen)
    return seen


class InlineExecutor(Executor):
    """Runs each task at once on the caller's thread: the pipeline's code, without its threads."""

    def submit(self, fn: Callable[..., T], /, *args: object, **kwargs: object) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as e:  # re-raised by result(), where a worker's would be
            future.set_exception(e)
        return future


def _sha256_hex(data: memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1e3
