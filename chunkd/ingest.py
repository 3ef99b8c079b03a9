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

This module holds steps 1-3, the rules of docs/SPEC.md "Rounds" (a file already taken, a file
claiming another's round) and the link step after the commit (:mod:`chunkd.deltas`). Steps 4-5
are :mod:`chunkd.ingest_pipeline`; the options and the result are :mod:`chunkd.ingest_result`.
What importers use of those is re-exported here, so they need only this module.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import stat
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path

from chunkd import rounds
from chunkd.checkpoint import parse_checkpoint, read_exact
from chunkd.deltas import link_previous_round
from chunkd.errors import NotACheckpointError, NotFoundError, RoundConflictError
from chunkd.flatindex import plan_chunks
from chunkd.ingest_pipeline import INLINE_MAX_BYTES, InlineExecutor, ms_since, stream_round
from chunkd.ingest_result import (
    OUTCOME_DUPLICATE,
    OUTCOME_INGESTED,
    OUTCOME_REPLACED,
    OUTCOME_SEEN,
    IngestOptions,
    IngestResult,
    Progress,
)
from chunkd.store import ChunkStore, FileIdentity, SourceRecord

__all__ = [
    "INLINE_MAX_BYTES",
    "OUTCOME_DUPLICATE",
    "OUTCOME_INGESTED",
    "OUTCOME_REPLACED",
    "OUTCOME_SEEN",
    "IngestOptions",
    "IngestResult",
    "Progress",
    "ingest_file",
]


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
                ms_since(started),
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
            result = stream_round(
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
        link_ms=ms_since(started),
    )


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
