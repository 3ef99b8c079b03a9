"""ClientLane: one client's writer state, run by the writer pool; the only writer of its database.

Everything that changes a client's database runs on its lane, one item at a time: ingests (after
the settle delay), retention, explicit ``ingest``/``prune``/``forget`` requests. A lane has no
thread of its own (issue 20): :mod:`chunkd.daemon.writers` runs lanes that have work, at most one
writer per lane at a time, so one writer per database still needs no locking between writers,
and different clients still ingest in parallel.

Threads that are not the lane's writer only *offer* work (:meth:`ClientLane.offer`,
:meth:`submit`): a bounded queue, never blocking, then :meth:`WriterPool.schedule`. Pending
paths, their settle deadlines and retry counts are touched only by the writer running the lane
(at most one at a time), so they need no lock; the next deadline goes to the pool's one timer.

Completion detection (:mod:`chunkd.daemon.settle`): an event (or a scan) for a path sets its
deadline to ``now + settle_delay``; a later event pushes it back; at the deadline the file must be
unchanged since the last look. A complete version overwritten before it was taken is logged
(``checkpoint.superseded``). A file that still fails validation in a way that may mean "still
being written" (truncated, CRC mismatch, changed while read) is retried with backoff before it is
rejected. What came of each file is reported by :mod:`chunkd.daemon.outcomes`.

The database is opened on demand through :class:`~chunkd.daemon.stores.StoreCache` (bounded,
least recently used closed first), never created for a client before a file needs it. The lane
keeps what its database holds (:attr:`ClientLane.held`, refreshed whenever it was open and
changed), so that when the client directory disappears with the database in it the daemon can
still say which rounds went with it (``client.removed``); a change of the stored rounds calls
``on_change`` (retention per change).

Taking a file (open beneath the directory, record the attempt, ingest, delete) is
:mod:`chunkd.daemon.intake`.

Liveness: ``stats.last_progress`` moves on every item a slice handles and on every chunk an
ingest stores (the ``progress`` callback), so :meth:`ClientLane.healthy` and the pool's
:meth:`~chunkd.daemon.writers.WriterPool.healthy` measure progress, not the length of a job: a
long ingest that keeps storing chunks is healthy.
"""

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
from chunkd.daemon.intake import Intake, reject, release_memory, stat_key
from chunkd.daemon.outcomes import (
    LaneStats,
    report_ingest,
    report_superseded,
    utc_now_iso,
)
from chunkd.daemon.pruning import nothing_to_prune, prune_job
from chunkd.daemon.settle import SettleTable, Superseded
from chunkd.daemon.state import HeldRounds
from chunkd.daemon.stores import ClientDatabase, StoreCache
from chunkd.daemon.writers import WriterPool
from chunkd.errors import BusyError, CheckpointError, ChunkdError, NotFoundError
from chunkd.ingest import IngestOptions, IngestResult
from chunkd.prune import PruneResult
from chunkd.retention import removes_nothing
from chunkd.store import ChunkStore, FileIdentity

__all__ = ["ClientLane", "LaneStats", "utc_now_iso"]

QUEUE_LIMIT = 10_000
#: Writer open is retried this often when another process holds the database.
REOPEN_DELAY_S = 5.0
#: A slice handles at least one item, then more while it has run less than this: long enough
#: to take a burst of offers in one go, short enough that a client with a backlog does not hold
#: a writer while others wait (the lane goes back to the tail of the run queue).
SLICE_S = 0.05


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
    """One client's writer state; run by a :class:`~chunkd.daemon.writers.WriterPool`."""

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
        writers: WriterPool,
        stores: StoreCache,
        on_round: Callable[[str, int], None] | None = None,
        on_change: Callable[[str], None] | None = None,
        on_our_failure: Callable[[Path], None] | None = None,
    ) -> None:
        self.client_id = client_id
        self.directory = directory
        self.db_path = db_path
        self._keep_rounds = keep_rounds
        self._delete_after_ingest = delete_after_ingest
        #: retention plans and deletes inside it (see chunkd.daemon.leases)
        self._lease_gate = lease_gate
        self._on_round = on_round  # the replica stage's hook: returns at once
        self._writers = writers
        #: the database, opened on demand; ``on_change``: its stored rounds changed
        self._db = ClientDatabase(client_id, directory, db_path, stores, on_change)
        self._inbox: queue.Queue[_Offer | _Job | _DirectoryGone] = queue.Queue(QUEUE_LIMIT)
        self._pending = SettleTable(settle_delay_s)  # the running writer only
        self._stopping = threading.Event()
        #: the pool's flags (its lock only): queued or running; earliest timer in its heap
        self.scheduled = False
        self.timer_at: float | None = None
        self.stats = LaneStats()
        self._intake = Intake(
            directory,
            db_path,
            options=options,
            ingest_slots=ingest_slots,
            pool=pool,
            stats=self.stats,
            on_our_failure=None if on_our_failure is None else lambda: on_our_failure(directory),
        )
        self._log = structlog.get_logger("chunkd.lane").bind(client=client_id)

    # -- other threads ---------------------------------------------------------------------------
    def offer(self, path: Path, completed: FileIdentity | None = None) -> bool:
        """A path may be a new or changed checkpoint; returns at once, False if queue is full.

        ``completed``: the file's identity at a close-after-write or a rename onto its name.
        """
        return self._put(_Offer(path, completed))

    def directory_removed(self) -> None:
        """The client directory is gone (the daemon checked): forget its files, close the
        database if it went with it (an open handle would keep a deleted file's disk space)."""
        self._put(_DirectoryGone())  # a full queue: the lane reopens lazily anyway

    def submit(self, run: Callable[[ChunkStore], object]) -> Future[object]:
        """Run ``run(store)`` on the lane; BusyError if stopping or the queue is full."""
        if self._stopping.is_set():
            raise BusyError(f"client {self.client_id}: the daemon is stopping")
        future: Future[object] = Future()
        if not self._put(_Job(run, future)):
            raise BusyError(f"client {self.client_id}: the work queue is full")
        return future

    def submit_ingest(self, path: Path, round_num: int | None) -> Future[object]:
        return self.submit(lambda store: self._ingest_now(store, path, round_num))

    def submit_prune(self, dry_run: bool) -> Future[object]:
        if not self._db.exists():  # nothing stored: nothing to open, nothing to create
            done: Future[object] = Future()
            done.set_result(nothing_to_prune(self._keep_rounds, dry_run))
            return done
        return self.submit(lambda store: self._prune(store, dry_run=dry_run))

    def stop(self) -> None:
        """Stop taking work; jobs still queued get BusyError (the pool finishes the slice in
        progress and the daemon closes the stores)."""
        self._stopping.set()
        self._drain_jobs()

    @property
    def held(self) -> HeldRounds:
        """What the database held at its last change (read by the main thread)."""
        return self._db.held

    @property
    def queue_depth(self) -> int:
        return self._inbox.qsize() + len(self._pending)

    def healthy(self, stall_s: float) -> bool:
        """False if the lane's job has made no progress for ``stall_s`` (not: ran that long)."""
        busy = self.stats.busy_since
        if busy is None:
            return True
        return time.monotonic() - max(busy, self.stats.last_progress) < stall_s

    def _put(self, item: _Offer | _Job | _DirectoryGone) -> bool:
        try:
            self._inbox.put_nowait(item)
        except queue.Full:
            return False
        self._writers.schedule(self)
        return True

    # -- the writer running the lane (one at a time) ---------------------------------------------
    def run_slice(self) -> float | None:
        """Handle due paths and queued items for about :data:`SLICE_S`; the next deadline."""
        structlog.contextvars.bind_contextvars(client=self.client_id)
        began = time.monotonic()
        try:
            while not self._stopping.is_set():
                self.stats.last_progress = time.monotonic()
                try:
                    if not self._step():
                        break
                except Exception as e:  # the lane's boundary: one bad file never stops a client
                    self.stats.errors += 1
                    self.stats.last_error = f"internal error: {e}"
                    self._log.exception(log.INGEST_FAILED, error=str(e), error_code="internal")
                    self._pending.clear()
                if time.monotonic() - began >= SLICE_S:
                    break
        finally:
            structlog.contextvars.unbind_contextvars("client")
        if self._stopping.is_set():
            self._drain_jobs()
            return None
        return self._pending.next_deadline()

    def has_work(self) -> bool:
        if not self._inbox.empty():
            return True
        deadline = self._pending.next_deadline()
        return deadline is not None and deadline <= time.monotonic()

    def end_slice(self) -> None:
        self._db.release()

    def _step(self) -> bool:
        """One due path, or else one queued item; False if there was neither."""
        due = self._pending.due(time.monotonic())
        if due:
            self._settle_or_ingest(due[0])
            return True
        try:
            item = self._inbox.get_nowait()
        except queue.Empty:
            return False
        if isinstance(item, _Offer):
            self._note_offer(item)
        elif isinstance(item, _DirectoryGone):
            self._directory_gone()
        else:
            self._run_job(item)
        return True

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
        """This exact file (path, size, mtime) was ingested, found duplicate, or rejected.

        No database yet: nothing was taken, and none is created to say so."""
        if not self._db.exists():
            return False
        store = self._db.ensure(self._log, self.stats)
        return store is not None and store.find_source(str(path.absolute()), key) is not None

    def _settle_or_ingest(self, path: Path) -> None:
        take, lost = self._pending.settle(path, stat_key(path), time.monotonic())
        self._superseded(lost)
        if take:
            self._ingest_pending(path)

    def _ingest_pending(self, path: Path) -> None:
        store = self._db.ensure(self._log, self.stats)
        if store is None:
            self._pending.postpone(path, REOPEN_DELAY_S, time.monotonic())
            return
        self._intake.take_settled(
            store,
            path,
            self._pending,
            delete=self._delete_after_ingest,
            logger=self._log,
            report=self._ingested,
        )

    def _ingest_now(self, store: ChunkStore, path: Path, round_num: int | None) -> IngestResult:
        """An explicit ``ingest`` request: no settle, no retry; errors go back to the caller."""
        self._pending.drop(path)
        try:
            return self._take(store, path, round_num, delete=False)
        except CheckpointError as e:
            self._reject(store, path, e)
            raise

    def _reject(self, store: ChunkStore, path: Path, error: CheckpointError) -> None:
        reject(store, path, error, self._log, self.stats)

    def _take(
        self, store: ChunkStore, path: Path, round_num: int | None, *, delete: bool
    ) -> IngestResult:
        return self._intake.take(
            store, path, round_num, delete=delete, logger=self._log, report=self._ingested
        )

    def _ingested(self, result: IngestResult) -> None:
        if report_ingest(self._log, self.stats, result):
            self._db.note_held(self._db.current())
            if self._on_round is not None and result.round_num is not None:
                self._on_round(self.client_id, result.round_num)

    def _prune(self, store: ChunkStore, *, dry_run: bool) -> PruneResult:
        gate = functools.partial(self._lease_gate, self.client_id)
        return prune_job(
            store,
            self._db,
            keep_rounds=self._keep_rounds,
            lease_gate=gate,
            dry_run=dry_run,
            logger=self._log,
        )

    def _run_job(self, job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        store = self._db.ensure(self._log, self.stats)
        if store is None:
            error: ChunkdError = BusyError(f"database {self.db_path} is held by another writer")
            if self._db.orphaned():
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
            release_memory(store, self._log)
            self._db.note_held(store)  # a forget (or any job) may have changed what is stored

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
        self._db.directory_gone()

    def prune_scheduled(self) -> None:
        """The retention schedule's entry point: queue a prune; never waits. A client with no
        database has nothing to prune (nothing is opened, nothing created)."""
        if not self._db.exists():
            return
        held = self._db.held
        if self._db.held_known and removes_nothing(
            len(held.rounds), held.generations, self._keep_rounds
        ):
            return  # a burst of first rounds to 10,000 clients must not open 10,000 databases
        try:
            future = self.submit(lambda store: self._prune(store, dry_run=False))
        except BusyError:
            self._db.changed()  # try again at the next pass
            return
        future.add_done_callback(self._log_prune_failure)

    def _log_prune_failure(self, future: Future[object]) -> None:
        error = future.exception()
        if error is not None:
            self._db.changed()  # not done: the next pass tries again
            self._log.error(
                log.RETENTION_FAILED,
                error=str(error),
                error_code=getattr(error, "code", "internal"),
            )
