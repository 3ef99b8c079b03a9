"""The ingest pipeline: one parsed checkpoint's chunks into the store, then the round committed.

Steps 4 and 5 of :mod:`chunkd.ingest`: stream the chunks in flat order with bounded memory
(``pread`` each chunk's parts into one buffer, CRC-32s and the whole-file SHA-256 in file order,
chunk hashes and the codec on a pool, only new chunk bytes written), check the file, and then
either commit the round or, for a file that merely repeats a stored round, undo the chunk rows.

Separate from :mod:`chunkd.ingest` because it is a different kind of code: that module decides
what to do with a file (already taken? which round? a conflict?) before any byte is stored; this
one moves the bytes fast and safely, with its threads, futures and read-ahead windows.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import TypeVar

from chunkd import codec
from chunkd.checkpoint import ParsedCheckpoint, read_into
from chunkd.deltas import RECENT, encode_chunk
from chunkd.errors import FileChangedError
from chunkd.filecheck import FileChecker
from chunkd.ingest_result import (
    OUTCOME_DUPLICATE,
    OUTCOME_INGESTED,
    OUTCOME_REPLACED,
    IngestOptions,
    IngestResult,
    Progress,
)
from chunkd.manifest import ChunkSpec, RoundLayout
from chunkd.store import ChunkStore, FileIdentity, SourceRecord

#: Chunks read ahead of the one being stored; memory is about this many chunks.
WINDOW = 4

#: A file this small is checked (CRC-32s, whole-file SHA-256) on the writer's own thread, and
#: without a caller's pool also hashed and encoded there: for a few KiB, starting three threads
#: per file and a GIL hand-off per future cost more than the work (issue 20: 2 KB checkpoints).
#: Bigger files keep the pipeline; a caller's pool (the daemon's) is always used.
INLINE_MAX_BYTES = 1 << 20

T = TypeVar("T")


def stream_round(
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
                ms_since(started),
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
        ms_since(started),
        layout.flat_bytes,
        writer.new_raw_bytes,
        committed.generation,
        previous.file_sha256 if previous else None,
        previous.source_path if previous else None,
    )


def layout_bytes(parsed: ParsedCheckpoint) -> int:
    return sum(s.nbytes for s in parsed.storages)


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


def ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1e3
