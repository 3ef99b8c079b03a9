"""The daemon's wiring and lifecycle: start in order, serve, stop in reverse order.

Start: logging -> directories -> socket (refuse if another daemon owns it) -> one lane per client
(no thread, no open database; refuse if another process holds a database's writer lock) ->
writers -> observers -> start-up scan -> schedules -> ``READY=1``. Stop (SIGTERM/SIGINT):
``STOPPING=1`` -> schedules -> observers -> socket -> lanes (queued jobs answered busy) ->
writers (each finishes its slice) -> open databases closed -> exit 0. Nothing is half-written at
any point: a round becomes visible only when its final transaction commits, and the lanes, run
by the writer pool (:mod:`chunkd.daemon.writers`), are the only writers.

The main thread runs :meth:`Daemon.run_forever`: it applies control messages from other threads
(a new client directory, a rescan), and sends ``WATCHDOG=1`` only while the writers show
progress (O(writers), not O(clients)), so systemd restarts a daemon whose ingest is stuck rather
than one that is merely idle.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path

import structlog

from chunkd import __version__, log
from chunkd.config import Settings
from chunkd.daemon import sdnotify
from chunkd.daemon.directories import client_dir_warning, ensure_watch_root, missing_directory
from chunkd.daemon.heartbeat import Heartbeat
from chunkd.daemon.lanes import ClientLane, utc_now_iso
from chunkd.daemon.leases import LeaseTable
from chunkd.daemon.metrics import ClientLabels, DaemonFigures
from chunkd.daemon.metrics_serve import daemon_figures
from chunkd.daemon.progress import in_progress
from chunkd.daemon.pruning import ChangedClients, forget_job
from chunkd.daemon.removals import ClientRemovals
from chunkd.daemon.replication import ReplicaStage
from chunkd.daemon.startup import startup_key
from chunkd.daemon.state import ClientInfo, CountingLogger, ErrorLedger, RemovedClient
from chunkd.daemon.status_report import status_report
from chunkd.daemon.stores import StoreCache, probe_writer
from chunkd.daemon.watcher import Watcher
from chunkd.daemon.writers import WriterPool, name_os_thread
from chunkd.deltas import RECENT
from chunkd.errors import BusyError, ChunkdError, NotFoundError
from chunkd.forget import ForgetResult
from chunkd.ingest import IngestOptions, IngestResult
from chunkd.prune import PruneResult
from chunkd.store import FileIdentity


class Daemon:
    """The running daemon; implements :class:`chunkd.daemon.state.DaemonState`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.leases = LeaseTable()
        self.started_at = utc_now_iso()
        self._started_mono = time.monotonic()
        self._lanes: dict[str, ClientLane] = {}
        #: Each client's errors as logged (lane thread and start-up), for ``chunkd status``.
        self._ledgers: dict[str, ErrorLedger] = {}
        self._lanes_lock = threading.Lock()  # lanes are added by the main thread, read by all
        self._control: queue.Queue[tuple[str, object]] = queue.Queue()
        self._stop = threading.Event()
        cores = os.cpu_count() or 2
        self._pool = ThreadPoolExecutor(
            max_workers=cores,
            thread_name_prefix="chunkd-hash",
            initializer=name_os_thread,  # else it inherits the name of the writer that made it
            initargs=("chunkd-hash",),
        )
        self._writers = WriterPool()  # runs the lanes that have work (chunkd.daemon.writers)
        self._stores = StoreCache()  # the writer databases open now, LRU-bounded
        #: clients whose stored rounds changed since their last retention pass
        self._changed = ChangedClients()
        # every ingest runs on a writer: as many slots, so commits of different clients overlap
        self._ingest_slots = threading.Semaphore(self._writers.size)
        self._options = IngestOptions(
            chunk_num=settings.chunk_num,
            max_chunk_bytes=settings.max_chunk_bytes,
            compression=settings.compression,
            delta=settings.delta,
            round_regex=settings.round_regex,
        )
        RECENT.resize(settings.delta_cache_bytes if settings.delta else 0)
        self._watcher = Watcher(settings, self._offer, self._request_client, self._request_gone)
        self._notifier = sdnotify.Notifier()
        self._heartbeat = Heartbeat(self._notifier, self._writers, self._lane_list)
        self._log = structlog.get_logger("chunkd.daemon")
        self._removals = ClientRemovals(self._log)  # client directories that disappeared
        self.ready = False
        self._replica = ReplicaStage.from_settings(settings, self._client_dbs)  # docs/REPLICA.md
        #: What an operator should know although the daemon runs (shown by ``chunkd status``).
        self.warnings: list[str] = []

    # -- DaemonState -----------------------------------------------------------------------------
    def clients(self) -> Mapping[str, ClientInfo]:
        with self._lanes_lock:
            return {
                cid: ClientInfo(cid, lane.directory, lane.db_path)
                for cid, lane in self._lanes.items()
            }

    def removed_clients(self) -> Mapping[str, RemovedClient]:
        return self._removals.snapshot()

    def _client_dbs(self) -> dict[str, Path]:
        return {cid: info.db_path for cid, info in self.clients().items()}

    def _lane(self, client_id: str) -> ClientLane:
        with self._lanes_lock:
            lane = self._lanes.get(client_id)
        if lane is None:
            raise NotFoundError(f"unknown client {client_id!r}")
        return lane

    def submit_ingest(
        self, client_id: str, path: Path, round_num: int | None
    ) -> Future[IngestResult]:
        return self._lane(client_id).submit_ingest(path, round_num)  # type: ignore[return-value]

    def submit_prune(self, client_id: str, dry_run: bool) -> Future[PruneResult]:
        return self._lane(client_id).submit_prune(dry_run)  # type: ignore[return-value]

    def submit_forget(
        self, client_id: str, round_num: int, generation: int | None, dry_run: bool
    ) -> Future[ForgetResult]:
        """``chunkd forget`` on the client's lane (its database's only writer); logged at warning,
        because it removes a version that retention would have kept."""
        job = functools.partial(
            forget_job,
            round_num=round_num,
            generation=generation,
            lease_gate=functools.partial(self.leases.deleting, client_id),
            dry_run=dry_run,
            logger=self._log.bind(client=client_id),
        )
        return self._lane(client_id).submit(job)  # type: ignore[return-value]

    def status(self) -> dict[str, object]:
        with self._lanes_lock:
            lanes = dict(self._lanes)
        return status_report(
            lanes,
            self._ledgers,
            head={
                "version": __version__,
                "pid": os.getpid(),
                "ready": self.ready,
                "uptime_s": round(time.monotonic() - self._started_mono, 1),
                "started_at": self.started_at,
                "watch_root": str(self.settings.watch_root),
                "socket": str(self.settings.socket),
            },
            tail={
                "dropped_offers": self._watcher.dropped_offers,
                "ingesting": in_progress(),
                "warnings": list(self.warnings),
                "removed_clients": {
                    cid: removed.to_dict()
                    for cid, removed in sorted(self._removals.snapshot().items())
                },
                "replica": self._replica.status() if self._replica is not None else None,
                "writers": self._writer_figures(),
            },
        )

    def figures(self, labels: ClientLabels) -> DaemonFigures:
        """The metrics' gauges at a scrape (:func:`chunkd.daemon.metrics_serve.daemon_figures`)."""
        return daemon_figures(
            self._lane_list(),
            labels,
            ready=self.ready,
            retention_pending=len(self._changed),
            open_databases=len(self._stores),
            replica=self._replica.status() if self._replica is not None else None,
        )

    def _writer_figures(self) -> dict[str, int]:
        """The writer pool's figures (issue 20): what the work costs, not the directories."""
        return {
            "threads": self._writers.size,
            "with_work": self._writers.runnable,
            "slices": self._writers.slices,
            "open_databases": len(self._stores),
            "databases_opened": self._stores.opens,
            "retention_pending": len(self._changed),
        }

    # -- callbacks from other threads: enqueue only ----------------------------------------------
    def _offer(self, client_id: str, path: Path, completed: FileIdentity | None = None) -> bool:
        with self._lanes_lock:
            lane = self._lanes.get(client_id)
        return lane.offer(path, completed) if lane is not None else False

    def _request_client(self, client_id: str, directory: Path) -> None:
        self._control.put(("client", (client_id, directory)))

    def _request_gone(self, path: Path) -> None:
        self._control.put(("gone", path))

    def request_rescan(self) -> None:
        self._control.put(("rescan", None))

    def request_stop(self) -> None:
        self._stop.set()
        self._control.put(("stop", None))

    def _run_retention(self) -> None:
        """A retention pass: a prune on each client whose stored rounds changed since its last
        pass (chunkd.daemon.pruning); nothing else is opened."""
        changed = self._changed.take()
        self._log.debug(log.RETENTION_STARTED, clients=len(changed))  # counted by the metrics
        for client_id in changed:
            with self._lanes_lock:
                lane = self._lanes.get(client_id)
            if lane is not None:
                lane.prune_scheduled()

    # -- main thread -----------------------------------------------------------------------------
    def add_client(self, client_id: str, directory: Path, *, at_start: bool) -> None:
        """Make a lane and a watch for a client, then scan its directory. The database is not
        opened (the lane opens it when a file needs it)."""
        with self._lanes_lock:
            existing = self._lanes.get(client_id)
        if existing is not None:
            if existing.directory != directory:
                self._log.warning(
                    log.CLIENT_ADDED,
                    client=client_id,
                    dir=str(directory),
                    error=f"client id already used by {existing.directory}; ignored",
                )
                return
            # The directory was deleted and created again: its old watch died with it.
            self._removals.returned(client_id)
            self._watcher.rewatch_client(client_id, directory)
            self._watcher.scan_client(client_id, directory)
            return
        db_path = self.settings.db_path_for(client_id, directory)
        ledger = self._ledgers.setdefault(client_id, ErrorLedger())
        clog = CountingLogger(self._log.bind(client=client_id), ledger)
        lane = ClientLane(
            client_id,
            directory,
            db_path,
            options=self._options,
            settle_delay_s=self.settings.settle_delay_s,
            keep_rounds=self.settings.chunk_keep_rounds,
            delete_after_ingest=self.settings.delete_after_ingest,
            lease_gate=self.leases.deleting,
            ingest_slots=self._ingest_slots,
            pool=self._pool,
            writers=self._writers,
            stores=self._stores,
            on_round=self._replica.round_committed if self._replica is not None else None,
            on_change=self._changed.mark,
            on_our_failure=self._watcher.relist,  # listed again at the next pass
        )
        lane._log = CountingLogger(lane._log, ledger)  # status counts what the lane logs
        try:
            probe_writer(db_path)
        except BusyError as e:
            if at_start:
                e.startup_key = "db_path"  # type: ignore[attr-defined]
                raise  # another daemon writes these databases: refuse to start
            clog.error(
                log.INGEST_FAILED, error=f"database {db_path} is held by another writer; retrying"
            )
        except ChunkdError as e:  # not a database (a directory, a link): reported, not fatal
            clog.error(log.INGEST_FAILED, error=str(e), error_code=e.code)
        if db_path.exists():
            self._changed.mark(client_id)  # restart (or new config): one retention pass each
        with self._lanes_lock:
            self._lanes[client_id] = lane
        self._watcher.watch_client(client_id, directory)
        self._log.info(log.CLIENT_ADDED, client=client_id, dir=str(directory), db=str(db_path))
        self._watcher.scan_client(client_id, directory)

    def scan_all(self) -> int:
        """Discover client directories and offer every candidate file (start-up, reconcile)."""
        self._watcher.unwatch_missing()
        self._check_removed(None)
        self._add_waiting_clients()
        for client_id, directory in self._watcher.discover_clients():
            self.add_client(client_id, directory, at_start=False)
        offered = 0
        with self._lanes_lock:
            lanes = list(self._lanes.values())
        for lane in lanes:
            if lane.directory.is_dir():
                self._watcher.watch_client(lane.client_id, lane.directory)
                offered += self._watcher.scan_client(lane.client_id, lane.directory)
        self._log.info(log.SCAN_COMPLETED, clients=len(lanes), files_offered=offered)
        return offered

    def _check_removed(self, gone: Path | None) -> None:
        """Clients whose directory is gone (at or below ``gone``; None: every client)."""
        with self._lanes_lock:
            lanes = list(self._lanes.values())
        for lane in lanes:
            if gone is not None and not lane.directory.is_relative_to(gone):
                continue
            if lane.directory.is_dir():
                continue
            if self._removals.note(lane.client_id, lane.directory, lane.db_path, lane.held):
                lane.directory_removed()

    def start(self) -> None:
        settings = self.settings
        self._ensure_watch_root()
        self._writers.start()
        for index, client in enumerate(settings.clients):
            with startup_key(f"clients[{index}].dir"):
                if self._explicit_dir_ready(index, client.id, client.dir):
                    self.add_client(client.id, client.dir, at_start=True)
        for client_id, directory in self._watcher.discover_clients():
            self.add_client(client_id, directory, at_start=True)
        self._watcher.start()
        self.scan_all()  # files written between the first scan and the observers' start
        if self._replica is not None:
            self._replica.start()  # compares every client with the bucket first: resumes

    def _ensure_watch_root(self) -> None:
        """A missing ``watch_root`` refuses to start unless it is the built-in defaults'
        (chunkd.daemon.directories): a typo must not look like a healthy daemon with no clients."""
        root = self.settings.watch_root
        with startup_key("watch_root"):
            created = ensure_watch_root(root, may_create=self.settings.create_watch_root)
        if created:
            self._log.info(log.WATCH_ROOT_MISSING, watch_root=str(root), created=True)

    def _explicit_dir_ready(self, index: int, client_id: str, directory: Path) -> bool:
        """Whether a ``[[clients]]`` directory can be watched now; one that does not exist yet is
        a warning (log and ``status``) until the reconciliation scan finds it."""
        warning = client_dir_warning(index, directory)
        if warning is None:
            return True
        if warning not in self.warnings:
            self.warnings.append(warning)
            self._log.warning(log.CLIENT_ADDED, client=client_id, dir=str(directory), error=warning)
        return False

    def _add_waiting_clients(self) -> None:
        """``[[clients]]`` whose directory did not exist at start-up and does now."""
        with self._lanes_lock:
            known = set(self._lanes)
        for index, client in enumerate(self.settings.clients):
            if client.id in known or missing_directory(client.dir) is not None:
                continue
            self.warnings[:] = [w for w in self.warnings if not w.startswith(f"clients[{index}]")]
            self.add_client(client.id, client.dir, at_start=False)

    def run_forever(self) -> None:
        interval = sdnotify.watchdog_interval_s()
        tick = min(1.0, interval / 3) if interval else 1.0
        while not self._stop.is_set():
            try:
                kind, payload = self._control.get(timeout=tick)
            except queue.Empty:
                kind, payload = "tick", None
            if kind == "client":
                client_id, directory = payload  # type: ignore[misc]
                self._guard(partial(self.add_client, client_id, directory, at_start=False))
            elif kind == "rescan":
                self._guard(self.scan_all)
            elif kind == "gone":
                self._guard(partial(self._check_removed, payload))
            self._heartbeat.beat()

    def _guard(self, work: object) -> None:
        try:
            work()  # type: ignore[operator]
        except ChunkdError as e:
            self._log.error(log.SCAN_FAILED, error=str(e), error_code=e.code)
        except OSError as e:
            self._log.error(log.SCAN_FAILED, error=str(e))

    def _lane_list(self) -> list[ClientLane]:
        with self._lanes_lock:
            return list(self._lanes.values())

    def notify_ready(self) -> None:
        self.ready = True
        self._notifier.notify("READY=1")

    def shutdown(self) -> None:
        self._notifier.notify("STOPPING=1")
        self._watcher.stop()
        with self._lanes_lock:
            lanes = list(self._lanes.values())
        for lane in lanes:
            lane.stop()
        self._writers.stop()  # each writer finishes its slice
        self._stores.close_all()
        if self._replica is not None:
            self._replica.stop()
        self._pool.shutdown(wait=True)
        self._notifier.close()
