"""ClientLane: one thread per client, the only writer of that client's database.

Everything that changes a client's database runs here, one job at a time: ingests (after the
settle delay), retention, explicit ``ingest``/``prune`` requests. One writer per database needs
no locking between writers, and different clients still ingest in parallel (bounded by a global
semaphore, so memory stays bounded however many clients there are).

Threads that are not the lane only *offer* work (:meth:`ClientLane.offer`, :meth:`submit`): a
bounded queue, never blocking. Pending paths, their settle deadlines and retry counts live in the
lane thread alone, so they need no lock.

Completion detection (:mod:`chunkd.daemon.settle`): an event (or a scan) for a path sets its
deadline to ``now + settle_delay``; a later event pushes it back; at the deadline the file must be
unchanged since the last look. A complete version overwritten before it was taken is logged
(``checkpoint.superseded``). A file that still fails validation in a way that may mean "still
being written" (truncated, CRC mismatch, changed while read) is retried with backoff before it is
rejected. What came of each file is reported by :mod:`chunkd.daemon.outcomes`.

The lane also keeps what its database holds (:attr:`ClientLane.held`, refreshed after every
write), so that when the client directory disappears with the database in it the daemon can still
say which rounds went with it (``client.removed``).

Taking a file (open beneath the directory, record the attempt, ingest, delete) is
:mod:`chunkd.daemon.intake`.

Liveness: ``stats.last_progress`` moves on every loop of an idle lane and on every chunk an
ingest stores (the ``progress`` callback), so :meth:`ClientLane.healthy` measures progress, not
the length of a job: a long ingest that keeps storing chunks is healthy.
"""

import contextlib
import functools
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import structlog

from chunkd import log
from chunkd.daemon.intake import Intake, record_outcome, release_memory, stat_key
from chunkd.daemon.outcomes import (
    LaneStats,
    report_ingest,
    report_rejected,
    report_superseded,
    utc_now_iso,
)
from chunkd.daemon.settle import SettleTable, Superseded
from chunkd.daemon.state import HeldRounds
from chunkd.errors import BusyError, CheckpointError, ChunkdError, NotFoundError
from chunkd.ingest import IngestOptions, IngestResult
from chunkd.prune import PruneResult, prune_store
from chunkd.store import ChunkStore, FileIdentity

__all__ = ["ClientLane", "LaneStats", "utc_now_iso"]

QUEUE_LIMIT = 10_000
#: Backoff before each retry of a file that may still be being written (seconds).
RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 16.0)
#: Writer open is retried this often when another process holds the database.
REOPEN_DELAY_S = 5.0


@dataclass(frozen=True, slots=True)
class _Offer:
    path: Path
    #: the file's identity at a complete write (close-after-write, rename), seen by the watcher
    completed: FileIdentity | None = None


@dataclass(frozen=True, slots=True)
class _Job:
    run: Callable[[ChunkStore], object]
    future: Future[object]


class _DirectoryGone:
    """The client directory was removed: drop pending files, let go of the deleted database."""


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
        lease_gate: Callable[[str], AbstractContextManager[frozenset[int]]],
        ingest_slots: threading.Semaphore,
        pool: Executor,
        on_round: Callable[[str, int], None] | None = None,
    ) -> None:
        self.client_id = client_id
        self.directory = directory
        self.db_path = db_path
        self._keep_rounds = keep_rounds
        self._delete_after_ingest = delete_after_ingest
        #: retention plans and deletes inside it (see chunkd.daemon.leases)
        self._lease_gate = lease_gate
        self._on_round = on_round  # the replica stage's hook: returns at once
        self._inbox: queue.Queue[_Offer | _Job | _DirectoryGone | None] = queue.Queue(QUEUE_LIMIT)
        self._pending = SettleTable(settle_delay_s)  # lane thread only
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lane-{client_id}", daemon=True)
        self._store: ChunkStore | None = None
        self.stats = LaneStats()
        #: what the database held at its last change (replaced whole; read by the main thread)
        self.held = HeldRounds()
        self._intake = Intake(
            directory,
            db_path,
            options=options,
            ingest_slots=ingest_slots,
            pool=pool,
            stats=self.stats,
        )
        self._log = structlog.get_logger("chunkd.lane").bind(client=client_id)

    # -- other threads ---------------------------------------------------------------------------
    def open(self) -> None:
        """Open the database as its writer (raises BusyError if another process holds it)."""
        self._store = ChunkStore.open_writer(self.db_path)
        self._note_held()

    def start(self) -> None:
        self._thread.start()

    def offer(self, path: Path, completed: FileIdentity | None = None) -> bool:
        """A path may be a new or changed checkpoint; returns at once, False if queue is full.

        ``completed``: the file's identity at a close-after-write or a rename onto its name.
        """
        try:
            self._inbox.put_nowait(_Offer(path, completed))
            return True
        except queue.Full:
            return False

    def directory_removed(self) -> None:
        """The client directory is gone (the daemon checked): forget its files, close the
        database if it went with it (an open handle would keep a deleted file's disk space)."""
        with contextlib.suppress(queue.Full):  # the lane reopens lazily anyway
            self._inbox.put_nowait(_DirectoryGone())

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

    # -- the lane thread -------------------------------------------------------------------------
    def _run(self) -> None:
        structlog.contextvars.bind_contextvars(client=self.client_id)
        try:
            while not self._stopping.is_set():
                self.stats.last_progress = time.monotonic()
                try:
                    item = self._next_item()
                    if isinstance(item, _Offer):
                        self._note_offer(item)
                    elif isinstance(item, _DirectoryGone):
                        self._directory_gone()
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

    def _next_item(self) -> _Offer | _Job | _DirectoryGone | None:
        now = time.monotonic()
        for path in self._pending.due(now):
            if self._stopping.is_set():
                return None
            self._settle_or_ingest(path)
        timeout = 1.0
        deadline = self._pending.next_deadline()
        if deadline is not None:
            timeout = max(0.0, min(timeout, deadline - now))
        try:
            return self._inbox.get(timeout=timeout)
        except queue.Empty:
            return None

    def _note_offer(self, offer: _Offer) -> None:
        path = offer.path
        key = stat_key(path)
        if path in self._pending:
            self._superseded(self._pending.offer(path, key, time.monotonic(), offer.completed))
            return
        if key is None or self._already_taken(path, key):
            return
        self._pending.add(path, key, time.monotonic(), offer.completed)
        self._log.info(log.CHECKPOINT_DETECTED, path=str(path), bytes=key.size)

    def _superseded(self, lost: Superseded | None) -> None:
        if lost is not None:
            report_superseded(self._log, self.stats, lost)

    def _already_taken(self, path: Path, key: FileIdentity) -> bool:
        """This exact file (path, size, mtime) was ingested, found duplicate, or rejected."""
        store = self._ensure_store()
        return store is not None and store.find_source(str(path.absolute()), key) is not None

    def _settle_or_ingest(self, path: Path) -> None:
        take, lost = self._pending.settle(path, stat_key(path), time.monotonic())
        self._superseded(lost)
        if take:
            self._ingest_pending(path)

    def _ingest_pending(self, path: Path) -> None:
        store = self._ensure_store()
        if store is None:
            self._pending.postpone(path, REOPEN_DELAY_S, time.monotonic())
            return
        try:
            self._take(store, path, None, delete=self._delete_after_ingest)
        except CheckpointError as e:
            pending = self._pending.get(path)
            if e.retryable and pending is not None and pending.attempts < len(RETRY_DELAYS_S):
                delay = RETRY_DELAYS_S[pending.attempts]
                attempt = self._pending.retry(path, delay, stat_key(path), time.monotonic())
                self._log.info(
                    log.CHECKPOINT_RETRYING,
                    path=str(path),
                    error=str(e),
                    error_code=e.code,
                    attempt=attempt,
                    retry_in_s=delay,
                )
                return
            self._pending.drop(path)
            self._reject(store, path, e)
            return
        except FileNotFoundError:
            self._pending.drop(path)
            return
        except (ChunkdError, OSError) as e:
            # Our side failed (disk full, database error): not recorded, so the next
            # reconciliation scan tries again once the fault is gone.
            self._pending.drop(path)
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
            self._pending.drop(path)
            self.stats.errors += 1
            self.stats.last_error = f"internal error: {e}"
            self._log.exception(
                log.INGEST_FAILED,
                path=str(path),
                error_code="internal",
                error=f"{type(e).__name__}: {e}",
            )
            record_outcome(store, path, "failed", self._log)  # not retried until the file changes
            return
        self._pending.drop(path)

    def _ingest_now(self, store: ChunkStore, path: Path, round_num: int | None) -> IngestResult:
        """An explicit ``ingest`` request: no settle, no retry; errors go back to the caller."""
        self._pending.drop(path)
        try:
            return self._take(store, path, round_num, delete=False)
        except CheckpointError as e:
            self._reject(store, path, e)
            raise

    def _reject(self, store: ChunkStore, path: Path, error: CheckpointError) -> None:
        report_rejected(self._log, self.stats, path, error)
        record_outcome(store, path, "rejected", self._log)

    def _take(
        self, store: ChunkStore, path: Path, round_num: int | None, *, delete: bool
    ) -> IngestResult:
        return self._intake.take(
            store, path, round_num, delete=delete, logger=self._log, report=self._ingested
        )

    def _ingested(self, result: IngestResult) -> None:
        if report_ingest(self._log, self.stats, result):
            self._note_held()
            if self._on_round is not None and result.round_num is not None:
                self._on_round(self.client_id, result.round_num)

    def _prune(self, store: ChunkStore, *, dry_run: bool) -> PruneResult:
        result = prune_store(
            store,
            self._keep_rounds,
            lease_gate=functools.partial(self._lease_gate, self.client_id),
            dry_run=dry_run,
        )
        if result.plan.remove or result.chunks_removed or dry_run:
            self._log.info(log.RETENTION_PRUNED, **result.log_fields())
        return result

    def _run_job(self, job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        store = self._ensure_store()
        if store is None:
            error: ChunkdError = BusyError(f"database {self.db_path} is held by another writer")
            if self._orphaned():
                error = NotFoundError(
                    f"client {self.client_id}: its directory {self.directory} is gone"
                )
            job.future.set_exception(error)
            return
        self.stats.busy_since = time.monotonic()
        try:
            job.future.set_result(job.run(store))
        except BaseException as e:  # the job's caller gets the error; the lane lives on
            job.future.set_exception(e)
        finally:
            self.stats.busy_since = None
            release_memory(self._store, self._log)
            self._note_held()  # a prune (or any job) may have changed what is stored

    def _drain_jobs(self) -> None:
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Job) and item.future.set_running_or_notify_cancel():
                item.future.set_exception(BusyError("the daemon is stopping"))

    def _directory_gone(self) -> None:
        self._pending.clear()
        if self._store is not None and not self._store.is_current():
            self._store.close()
            self._store = None

    def _note_held(self) -> None:
        """Remember the stored rounds (O(versions), narrow columns): a deleted database cannot
        be asked afterwards. Best effort: a failed read keeps the last figures."""
        store = self._store
        if store is None or not store.is_current():
            return
        try:
            versions = store.list_versions()
        except ChunkdError:
            return
        self.held = HeldRounds(
            rounds=tuple(sorted(v.round_num for v in versions if v.current)),
            generations=sum(1 for v in versions if not v.current),
        )

    def _ensure_store(self) -> ChunkStore | None:
        if self._store is not None and not self._store.is_current():
            # the client directory (and the database in it) was deleted or replaced
            self._log.warning(
                log.INGEST_FAILED, error="database file vanished; reopening", db=str(self.db_path)
            )
            self._store.close()
            self._store = None
        if self._store is None:
            if self._orphaned():
                return None  # never re-create a removed client's directory (client.removed)
            try:
                self._store = ChunkStore.open_writer(self.db_path)
            except ChunkdError as e:
                self.stats.last_error = str(e)
                self._log.error(log.INGEST_FAILED, error=str(e), error_code=e.code)
                return None
            self._note_held()
        return self._store

    def _orphaned(self) -> bool:
        """The client directory is gone and the database with it: there is nothing to open, and
        opening would create both again."""
        return not self.db_path.exists() and not self.directory.is_dir()

    def prune_scheduled(self) -> None:
        """The retention schedule's entry point: queue a prune; never waits."""
        if self._store is None and self._orphaned():
            return
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
