"""Taking one file into a client's database: the lane's ingest, from open to delete.

Split from :mod:`chunkd.daemon.lanes` (which decides *when* a file is taken). Every file is opened
beneath the client directory without following links (:mod:`chunkd.safepath`), read through
that descriptor, and deleted (``delete_after_ingest``) through it too, so a tenant swapping a path
component for a symlink reaches nothing outside. Before streaming, the attempt is recorded durably
(:mod:`chunkd.daemon.attempts`): a file that killed the daemon
:data:`~chunkd.daemon.attempts.MAX_ATTEMPTS` times is set aside. The ingest itself holds one of
the daemon's ingest slots (a global semaphore), so memory stays bounded however many clients
ingest at once.

Runs on the writer running the client's lane only (one at a time).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from chunkd import log, safepath
from chunkd.daemon.attempts import MAX_ATTEMPTS, AttemptLog, CrashedDaemonError, delete_verified
from chunkd.daemon.outcomes import LaneStats, report_rejected
from chunkd.daemon.progress import IngestProgress
from chunkd.daemon.settle import SettleTable
from chunkd.errors import CheckpointError, ChunkdError, ForbiddenError, NotACheckpointError
from chunkd.ingest import OUTCOME_SEEN, IngestOptions, IngestResult, ingest_file
from chunkd.store import ChunkStore, FileIdentity, SourceRecord

#: Backoff before each retry of a file that may still be being written (seconds).
RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 16.0)


class Intake:
    """One client's way of taking files: its directory, options, attempt log and ingest slots."""

    def __init__(
        self,
        directory: Path,
        db_path: Path,
        *,
        options: IngestOptions,
        ingest_slots: threading.Semaphore,
        pool: Executor,
        stats: LaneStats,
        on_our_failure: Callable[[], None] | None = None,
    ) -> None:
        self.directory = directory
        #: our side failed (disk full, database error): have the directory listed again at the
        #: next reconciliation pass, which would otherwise skip it (docs/DESIGN.md, "The
        #: reconciliation scan lists only what may have changed")
        self._on_our_failure = on_our_failure
        self._options = options
        self._slots = ingest_slots
        self._pool = pool
        self._stats = stats
        self._attempts = AttemptLog(db_path)

    def take(
        self,
        store: ChunkStore,
        path: Path,
        round_num: int | None,
        *,
        delete: bool,
        logger: Any,
        report: Callable[[IngestResult], None],
    ) -> IngestResult:
        """Open beneath the directory, record the attempt, ingest through the descriptor,
        ``report`` the result, and (``delete``) remove the file through the same descriptor's
        directory."""
        try:
            beneath = safepath.open_beneath(self.directory, path)
        except ForbiddenError as e:
            raise NotACheckpointError(str(e)) from None
        with beneath:
            source = str(path.absolute())
            identity = FileIdentity.of(beneath.stat)
            earlier = self._attempts.previous(source, identity)
            if earlier >= MAX_ATTEMPTS:
                self._attempts.end()
                raise CrashedDaemonError(
                    f"{path}: the daemon died {earlier} times while ingesting this version of "
                    "the file; it is set aside until the file changes"
                )

            def attempt() -> IngestResult:
                # Recorded once this lane holds an ingest slot: waiting for one is no attempt.
                self._record_attempt(source, identity, earlier + 1, logger)
                return ingest_file(
                    path,
                    store,
                    self._options,
                    round_num=round_num,
                    pool=self._pool,
                    fd=beneath.fd,
                    progress=self._progress(path, logger),
                )

            try:
                result = self._with_slot(store, attempt, logger)
            finally:
                self._attempts.end()
            report(result)
            if delete and result.outcome != OUTCOME_SEEN:
                delete_verified(store, beneath, result, logger)
            return result

    def take_settled(
        self,
        store: ChunkStore,
        path: Path,
        pending: SettleTable,
        *,
        delete: bool,
        logger: Any,
        report: Callable[[IngestResult], None],
    ) -> None:
        """Take a settled file, and decide what its failure means: retried with backoff while
        it may still be being written, rejected (and recorded) when it cannot be a checkpoint,
        left for the next scan when our side failed (disk full, database error)."""
        try:
            self.take(store, path, None, delete=delete, logger=logger, report=report)
        except CheckpointError as e:
            entry = pending.get(path)
            if e.retryable and entry is not None and entry.attempts < len(RETRY_DELAYS_S):
                delay = RETRY_DELAYS_S[entry.attempts]
                attempt = pending.retry(path, delay, stat_key(path), time.monotonic())
                logger.info(
                    log.CHECKPOINT_RETRYING,
                    path=str(path),
                    error=str(e),
                    error_code=e.code,
                    attempt=attempt,
                    retry_in_s=delay,
                )
                return
            pending.drop(path)
            reject(store, path, e, logger, self._stats)
            return
        except FileNotFoundError:
            pending.drop(path)
            return
        except (ChunkdError, OSError) as e:
            # Our side failed (disk full, database error): not recorded, so the next
            # reconciliation scan tries again once the fault is gone.
            pending.drop(path)
            if self._on_our_failure is not None:
                self._on_our_failure()
            self._stats.errors += 1
            self._stats.last_error = str(e)
            logger.error(
                log.INGEST_FAILED,
                path=str(path),
                error=str(e),
                error_code=getattr(e, "code", "internal"),
            )
            return
        except Exception as e:  # boundary: a bug met by one file must not stall the client
            pending.drop(path)
            self._stats.errors += 1
            self._stats.last_error = f"internal error: {e}"
            logger.exception(
                log.INGEST_FAILED,
                path=str(path),
                error_code="internal",
                error=f"{type(e).__name__}: {e}",
            )
            record_outcome(store, path, "failed", logger)  # not retried until the file changes
            return
        pending.drop(path)

    def _record_attempt(self, source: str, identity: FileIdentity, count: int, logger: Any) -> None:
        """Best effort: a full disk must fail the ingest in the database, where it is reported
        and retried, not here; the guard against crash loops is then off for this attempt."""
        try:
            self._attempts.begin(source, identity, count)
        except OSError as e:
            logger.warning(log.ATTEMPT_UNRECORDED, path=source, error=str(e))

    def _with_slot(
        self, store: ChunkStore, work: Callable[[], IngestResult], logger: Any
    ) -> IngestResult:
        with self._slots:
            self._stats.busy_since = time.monotonic()
            try:
                return work()
            finally:
                self._stats.busy_since = None
                self._stats.last_progress = time.monotonic()
                release_memory(store, logger)

    def _progress(self, path: Path, logger: Any) -> Callable[[int, int], None]:
        """ingest_file's progress callback, after each chunk: the watchdog's heartbeat, and
        ``checkpoint.progress`` lines and ``status.ingesting`` for long files."""
        report = IngestProgress(logger, path)

        def beat(bytes_done: int, bytes_total: int) -> None:
            self._stats.last_progress = time.monotonic()
            report(bytes_done, bytes_total)

        return beat


def reject(
    store: ChunkStore, path: Path, error: CheckpointError, logger: Any, stats: LaneStats
) -> None:
    """Report a file that is no checkpoint, and remember it so no scan offers it again."""
    report_rejected(logger, stats, path, error)
    record_outcome(store, path, "rejected", logger)


def release_memory(store: ChunkStore | None, logger: Any) -> None:
    if store is not None:
        try:
            store.release_memory()
        except ChunkdError as e:
            logger.warning(log.INGEST_FAILED, error=f"cannot release memory: {e}")


def record_outcome(store: ChunkStore, path: Path, outcome: str, logger: Any) -> None:
    """Remember this version of the file, so no scan offers it again until it changes."""
    key = stat_key(path)
    if key is not None:
        try:
            store.record_source(SourceRecord(str(path.absolute()), key, None, None, outcome))
        except ChunkdError as e:
            logger.error(log.INGEST_FAILED, path=str(path), error=str(e))


def stat_key(path: Path) -> FileIdentity | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return FileIdentity.of(st)
