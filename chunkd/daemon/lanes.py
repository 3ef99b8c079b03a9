"""ClientLane: one thread per client, the only writer of that client's database.

Everything that changes a client's database runs here, one job at a time: ingests (after the
settle delay), retention, explicit ``ingest``/``prune`` requests. One writer per database needs
no locking between writers, and different clients still ingest in parallel (bounded by a global
semaphore, so memory stays bounded however many clients there are).

Threads that are not the lane only *offer* work (:meth:`ClientLane.offer`, :meth:`submit`): a
bounded queue, never blocking. Pending paths, their settle deadlines and retry counts live in the
lane thread alone, so they need no lock.

Completion detection: an event (or a scan) for a path sets its deadline to ``now +
settle_delay``; a later event pushes it back. When the deadline passes, the file's size and mtime
must equal what they were at the last look, else the deadline moves again. A file that still
fails validation in a way that may mean "still being written" (truncated, CRC mismatch, changed
while read) is retried with backoff before it is rejected.

Every file is opened beneath the client directory without following links
(:mod:`chunkd.safepath`), read through that descriptor, and deleted (``delete_after_ingest``)
through it too, so a tenant swapping a path component for a symlink reaches nothing outside.
Before streaming, the attempt is recorded durably (:mod:`chunkd.daemon.attempts`): a file that
killed the daemon :data:`~chunkd.daemon.attempts.MAX_ATTEMPTS` times is set aside.

Liveness: ``stats.last_progress`` moves on every loop of an idle lane and on every chunk an
ingest stores (the ``progress`` callback), so :meth:`ClientLane.healthy` measures progress, not
the length of a job: a long ingest that keeps storing chunks is healthy.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import structlog

from chunkd import log, safepath
from chunkd.daemon.attempts import MAX_ATTEMPTS, AttemptLog, CrashedDaemonError, delete_verified
from chunkd.daemon.progress import IngestProgress
from chunkd.errors import (
    BusyError,
    CheckpointError,
    ChunkdError,
    ForbiddenError,
    NotACheckpointError,
)
from chunkd.ingest import (
    OUTCOME_DUPLICATE,
    OUTCOME_REPLACED,
    OUTCOME_SEEN,
    IngestOptions,
    IngestResult,
    ingest_file,
)
from chunkd.prune import PruneResult, prune_store
from chunkd.store import ChunkStore, FileIdentity, SourceRecord

QUEUE_LIMIT = 10_000
#: Backoff before each retry of a file that may still be being written (seconds).
RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 16.0)
#: Writer open is retried this often when another process holds the database.
REOPEN_DELAY_S = 5.0


@dataclass(slots=True)
class _Pending:
    deadline: float
    last_stat: FileIdentity | None
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class _Offer:
    path: Path


@dataclass(frozen=True, slots=True)
class _Job:
    run: Callable[[ChunkStore], object]
    future: Future[object]


@dataclass(slots=True)
class LaneStats:
    """Figures for ``chunkd status``; written by the lane thread, read by anyone (plain ints)."""

    ingested: int = 0
    duplicates: int = 0
    rejected: int = 0
    errors: int = 0
    last_ingest: dict[str, object] | None = None
    last_error: str | None = None
    busy_since: float | None = None
    last_progress: float = field(default_factory=time.monotonic)


class ClientLane:
    """The writer thread of one client's database."""

    def __init__(
        self,
        client_id: str,
        directory: Path,
        db_path: Path,
        *,
        options: IngestOptions,
        settle_delay_s: float,
        keep_rounds: int,
        delete_after_ingest: bool,
        leased: Callable[[str], frozenset[int]],
        ingest_slots: threading.Semaphore,
        pool: Executor,
        on_round: Callable[[str, int], None] | None = None,
    ) -> None:
        self.client_id = client_id
        self.directory = directory
        self.db_path = db_path
        self._options = options
        self._settle_s = settle_delay_s
        self._keep_rounds = keep_rounds
        self._delete_after_ingest = delete_after_ingest
        self._leased = leased
        self._slots = ingest_slots
        self._pool = pool
        self._on_round = on_round  # the replica stage's hook: returns at once
        self._inbox: queue.Queue[_Offer | _Job | None] = queue.Queue(QUEUE_LIMIT)
        self._pending: dict[Path, _Pending] = {}  # lane thread only
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lane-{client_id}", daemon=True)
        self._store: ChunkStore | None = None
        self.stats = LaneStats()
        self._attempts = AttemptLog(db_path)
        self._log = structlog.get_logger("chunkd.lane").bind(client=client_id)

    # -- other threads ---------------------------------------------------------------------------
    def open(self) -> None:
        """Open the database as its writer (raises BusyError if another process holds it)."""
        self._store = ChunkStore.open_writer(self.db_path)

    def start(self) -> None:
        self._thread.start()

    def offer(self, path: Path) -> bool:
        """A path may be a new or changed checkpoint; returns at once, False if queue is full."""
        try:
            self._inbox.put_nowait(_Offer(path))
            return True
        except queue.Full:
            return False

    def submit(self, run: Callable[[ChunkStore], object]) -> Future[object]:
        """Run ``run(store)`` on the lane; BusyError if stopping or the queue is full."""
        if self._stopping.is_set():
            raise BusyError(f"client {self.client_id}: the daemon is stopping")
        future: Future[object] = Future()
        try:
            self._inbox.put_nowait(_Job(run, future))
        except queue.Full:
            raise BusyError(f"client {self.client_id}: the work queue is full") from None
        return future

    def submit_ingest(self, path: Path, round_num: int | None) -> Future[object]:
        return self.submit(lambda store: self._ingest_now(store, path, round_num))

    def submit_prune(self, dry_run: bool) -> Future[object]:
        return self.submit(lambda store: self._prune(store, dry_run=dry_run))

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop taking work, let the job in progress finish, close the database."""
        self._stopping.set()
        with contextlib.suppress(queue.Full):  # a full queue is drained by the stop flag
            self._inbox.put_nowait(None)
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        elif self._store is not None:
            self._store.close()
            self._store = None

    @property
    def queue_depth(self) -> int:
        return self._inbox.qsize() + len(self._pending)

    def healthy(self, stall_s: float) -> bool:
        """False if the lane's job has made no progress for ``stall_s`` (not: ran that long)."""
        busy = self.stats.busy_since
        if busy is None:
            return True
        return time.monotonic() - max(busy, self.stats.last_progress) < stall_s

    def _progress(self, path: Path) -> Callable[[int, int], None]:
        """ingest_file's progress callback (lane thread), after each chunk: the watchdog's
        heartbeat, and ``checkpoint.progress`` lines and ``status.ingesting`` for long files."""
        report = IngestProgress(self._log, path)

        def beat(bytes_done: int, bytes_total: int) -> None:
            self.stats.last_progress = time.monotonic()
            report(bytes_done, bytes_total)

        return beat

    # -- the lane thread -------------------------------------------------------------------------
    def _run(self) -> None:
        structlog.contextvars.bind_contextvars(client=self.client_id)
        try:
            while not self._stopping.is_set():
                self.stats.last_progress = time.monotonic()
                try:
                    item = self._next_item()
                    if isinstance(item, _Offer):
                        self._note_offer(item.path)
                    elif item is not None:
                        self._run_job(item)
                except Exception as e:  # the lane's boundary: one bad file never stops a client
                    self.stats.errors += 1
                    self.stats.last_error = f"internal error: {e}"
                    self._log.exception(log.INGEST_FAILED, error=str(e), error_code="internal")
                    self._pending.clear()
        finally:
            self._drain_jobs()
            if self._store is not None:
                self._store.close()
                self._store = None

    def _next_item(self) -> _Offer | _Job | None:
        now = time.monotonic()
        due = [p for p, pending in self._pending.items() if pending.deadline <= now]
        for path in due:
            if self._stopping.is_set():
                return None
            self._settle_or_ingest(path)
        timeout = 1.0
        if self._pending:
            timeout = max(0.0, min(timeout, min(p.deadline for p in self._pending.values()) - now))
        try:
            return self._inbox.get(timeout=timeout)
        except queue.Empty:
            return None

    def _note_offer(self, path: Path) -> None:
        pending = self._pending.get(path)
        deadline = time.monotonic() + self._settle_s
        if pending is not None:
            # Settled means unchanged since the *last* event, not since the first one (which
            # for a new file is usually its creation at size 0).
            pending.deadline = max(pending.deadline, deadline)
            pending.last_stat = _stat_key(path)
            return
        key = _stat_key(path)
        if key is None or self._already_taken(path, key):
            return
        self._pending[path] = _Pending(deadline, key)
        self._log.info(log.CHECKPOINT_DETECTED, path=str(path), bytes=key.size)

    def _already_taken(self, path: Path, key: FileIdentity) -> bool:
        """This exact file (path, size, mtime) was ingested, found duplicate, or rejected."""
        store = self._ensure_store()
        return store is not None and store.find_source(str(path.absolute()), key) is not None

    def _settle_or_ingest(self, path: Path) -> None:
        pending = self._pending[path]
        now_stat = _stat_key(path)
        if now_stat is None:  # gone (renamed away, deleted): nothing to take
            del self._pending[path]
            return
        if now_stat != pending.last_stat:
            pending.last_stat = now_stat
            pending.deadline = time.monotonic() + self._settle_s
            return
        self._ingest_pending(path, pending)

    def _ingest_pending(self, path: Path, pending: _Pending) -> None:
        store = self._ensure_store()
        if store is None:
            pending.deadline = time.monotonic() + REOPEN_DELAY_S
            return
        try:
            self._take(store, path, None, delete=self._delete_after_ingest)
        except CheckpointError as e:
            if e.retryable and pending.attempts < len(RETRY_DELAYS_S):
                delay = RETRY_DELAYS_S[pending.attempts]
                pending.attempts += 1
                pending.deadline = time.monotonic() + delay
                pending.last_stat = _stat_key(path)
                self._log.info(
                    log.CHECKPOINT_RETRYING,
                    path=str(path),
                    error=str(e),
                    error_code=e.code,
                    attempt=pending.attempts,
                    retry_in_s=delay,
                )
                return
            del self._pending[path]
            self._reject(store, path, e)
            return
        except FileNotFoundError:
            del self._pending[path]
            return
        except (ChunkdError, OSError) as e:
            # Our side failed (disk full, database error): not recorded, so the next
            # reconciliation scan tries again once the fault is gone.
            del self._pending[path]
            self.stats.errors += 1
            self.stats.last_error = str(e)
            self._log.error(
                log.INGEST_FAILED,
                path=str(path),
                error=str(e),
                error_code=getattr(e, "code", "internal"),
            )
            return
        except Exception as e:  # boundary: a bug met by one file must not stall the client
            del self._pending[path]
            self.stats.errors += 1
            self.stats.last_error = f"internal error: {e}"
            self._log.exception(
                log.INGEST_FAILED,
                path=str(path),
                error_code="internal",
                error=f"{type(e).__name__}: {e}",
            )
            self._record(store, path, "failed")  # not retried until the file changes
            return
        del self._pending[path]

    def _ingest_now(self, store: ChunkStore, path: Path, round_num: int | None) -> IngestResult:
        """An explicit ``ingest`` request: no settle, no retry; errors go back to the caller."""
        self._pending.pop(path, None)
        try:
            return self._take(store, path, round_num, delete=False)
        except CheckpointError as e:
            self._reject(store, path, e)
            raise

    def _take(
        self, store: ChunkStore, path: Path, round_num: int | None, *, delete: bool
    ) -> IngestResult:
        """Open beneath the directory, record the attempt, ingest through the descriptor,
        report, and (``delete``) remove the file through the same descriptor's directory."""
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
                self._record_attempt(source, identity, earlier + 1)
                return ingest_file(
                    path,
                    store,
                    self._options,
                    round_num=round_num,
                    pool=self._pool,
                    fd=beneath.fd,
                    progress=self._progress(path),
                )

            try:
                result = self._with_slot(attempt)
            finally:
                self._attempts.end()
            self._report(result)
            if delete and result.outcome != OUTCOME_SEEN:
                self._delete_verified(store, beneath, result)
            return result

    def _record_attempt(self, source: str, identity: FileIdentity, count: int) -> None:
        """Best effort: a full disk must fail the ingest in the database, where it is reported
        and retried, not here; the guard against crash loops is then off for this attempt."""
        try:
            self._attempts.begin(source, identity, count)
        except OSError as e:
            self._log.warning(log.ATTEMPT_UNRECORDED, path=source, error=str(e))

    def _with_slot(self, work: Callable[[], IngestResult]) -> IngestResult:
        with self._slots:
            self.stats.busy_since = time.monotonic()
            try:
                return work()
            finally:
                self.stats.busy_since = None
                self.stats.last_progress = time.monotonic()
                self._release_memory()

    def _release_memory(self) -> None:
        if self._store is not None:
            try:
                self._store.release_memory()
            except ChunkdError as e:
                self._log.warning(log.INGEST_FAILED, error=f"cannot release memory: {e}")

    def _report(self, result: IngestResult) -> None:
        fields = result.log_fields()
        if result.outcome == OUTCOME_SEEN:
            self._log.debug("checkpoint.seen", path=result.path, round=result.round_num)
            return
        if result.outcome == OUTCOME_DUPLICATE:
            self.stats.duplicates += 1
            self._log.info(
                log.CHECKPOINT_DUPLICATE,
                path=result.path,
                round=result.round_num,
                sha256=result.file_sha256,
                bytes_in=result.bytes_in,
            )
            return
        self.stats.ingested += 1
        self.stats.last_ingest = {
            "round": result.round_num,
            "path": result.path,
            "at": utc_now_iso(),
            "bytes_in": result.bytes_in,
        }
        if result.outcome == OUTCOME_REPLACED:
            # the earlier version stays restorable as generation ``generation - 1``
            self._log.warning(
                log.ROUND_REPLACED,
                round=result.round_num,
                path=result.path,
                sha256=result.file_sha256,
                previous_sha256=result.previous_sha256,
                previous_path=result.previous_path,
                generation=result.generation,
            )
        self._log.info(log.CHECKPOINT_INGESTED, **fields)
        if self._on_round is not None and result.round_num is not None:
            self._on_round(self.client_id, result.round_num)

    def _reject(self, store: ChunkStore, path: Path, error: CheckpointError) -> None:
        self.stats.rejected += 1
        self.stats.last_error = str(error)
        self._log.warning(
            log.CHECKPOINT_REJECTED,
            path=str(path),
            error=str(error),
            error_code=error.code,
            reason=type(error).__name__,
        )
        self._record(store, path, "rejected")

    def _record(self, store: ChunkStore, path: Path, outcome: str) -> None:
        """Remember this version of the file, so no scan offers it again until it changes."""
        key = _stat_key(path)
        if key is not None:
            try:
                store.record_source(SourceRecord(str(path.absolute()), key, None, None, outcome))
            except ChunkdError as e:
                self._log.error(log.INGEST_FAILED, path=str(path), error=str(e))

    def _delete_verified(
        self, store: ChunkStore, beneath: safepath.BeneathFile, result: IngestResult
    ) -> None:
        delete_verified(store, beneath, result, self._log)

    def _prune(self, store: ChunkStore, *, dry_run: bool) -> PruneResult:
        leased = self._leased(self.client_id)
        result = prune_store(store, self._keep_rounds, leased=leased, dry_run=dry_run)
        if result.plan.remove or result.chunks_removed or dry_run:
            self._log.info(log.RETENTION_PRUNED, **result.log_fields())
        return result

    def _run_job(self, job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        store = self._ensure_store()
        if store is None:
            job.future.set_exception(
                BusyError(f"database {self.db_path} is held by another writer")
            )
            return
        self.stats.busy_since = time.monotonic()
        try:
            job.future.set_result(job.run(store))
        except BaseException as e:  # the job's caller gets the error; the lane lives on
            job.future.set_exception(e)
        finally:
            self.stats.busy_since = None
            self._release_memory()

    def _drain_jobs(self) -> None:
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Job) and item.future.set_running_or_notify_cancel():
                item.future.set_exception(BusyError("the daemon is stopping"))

    def _ensure_store(self) -> ChunkStore | None:
        if self._store is not None and not self._store.is_current():
            # the client directory (and the database in it) was deleted or replaced
            self._log.warning(
                log.INGEST_FAILED, error="database file vanished; reopening", db=str(self.db_path)
            )
            self._store.close()
            self._store = None
        if self._store is None:
            try:
                self._store = ChunkStore.open_writer(self.db_path)
            except ChunkdError as e:
                self.stats.last_error = str(e)
                self._log.error(log.INGEST_FAILED, error=str(e), error_code=e.code)
                return None
        return self._store

    def prune_scheduled(self) -> None:
        """The retention schedule's entry point: queue a prune; never waits."""
        try:
            future = self.submit(lambda store: self._prune(store, dry_run=False))
        except BusyError:
            return
        future.add_done_callback(self._log_prune_failure)

    def _log_prune_failure(self, future: Future[object]) -> None:
        error = future.exception()
        if error is not None:
            self._log.error(
                log.RETENTION_FAILED,
                error=str(error),
                error_code=getattr(error, "code", "internal"),
            )


def utc_now_iso() -> str:
    """ISO 8601 UTC with a Z, as in the log lines; sortable as text."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _stat_key(path: Path) -> FileIdentity | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return FileIdentity.of(st)
