"""The replica upload stage: every committed round goes to the bucket, without slowing ingest.

One thread. Lanes call :meth:`ReplicaStage.round_committed` after a round commits: it marks the
client dirty and returns at once (never blocks, never fails). The thread then compares the
client's local rounds (its own read-only connection) with the manifests in the bucket and uploads
what is missing, oldest first, with :func:`chunkd.replica.upload.upload_round` (chunks, then
manifest). Which rounds the bucket should hold is the newest ``replica_keep_rounds`` in the
store's one order (run, then round number: :func:`chunkd.retention.newest`), and "holds" means
the same version (file SHA-256, run, generation), so a rerun that rewrote round 2 after run A's
round 6 is uploaded again and counted in ``lag_rounds`` until it is. Every client is also
compared at start-up and every :data:`RECONCILE_S`, so a restart, a missed hook or an outage is
caught up: what is in the bucket is the only progress record.

Failures (bucket unreachable, full, refusing) are logged as ``replica.failed``, shown by
``chunkd status`` (``last_error``) and retried with exponential backoff up to :data:`BACKOFF_MAX_S`;
local rounds are never touched by this stage. Replica retention and the chunk sweep
(:func:`chunkd.replica.prune.prune_replica`) run every ``prune_interval`` once uploads are current.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from chunkd import log
from chunkd.config import ReplicaConfig, Settings
from chunkd.daemon.lanes import utc_now_iso
from chunkd.errors import BusyError, ChunkdError, IntegrityError, NotFoundError
from chunkd.retention import newest
from chunkd.store import ChunkStore, RoundInfo

if TYPE_CHECKING:
    from chunkd.replica.layout import ManifestVersion
    from chunkd.replica.locks import ReplicaLock
    from chunkd.replica.upload import UploadResult

#: Every client is compared with the bucket this often even without a hook call.
RECONCILE_S = 60.0
BACKOFF_MAX_S = 30.0

Clients = Callable[[], Mapping[str, Path]]


def replica_host(config: ReplicaConfig) -> str:
    """The configured host name, else this machine's (made safe as one key segment)."""
    if config.host:
        return config.host
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())[:128]
    return name if name not in ("", ".", "..") else "localhost"


class _Stopping(Exception):
    """Raised from the upload's keepalive to abandon a round when the daemon stops."""


class ReplicaStage:
    """See the module docstring. Fields marked "stage thread" are touched by that thread only."""

    def __init__(
        self,
        config: ReplicaConfig,
        *,
        chunk_keep_rounds: int,
        clients: Clients,
        backoff_max_s: float = BACKOFF_MAX_S,
    ) -> None:
        # boto3 costs ~100 ms and ~30 MiB to import: only daemons with a [replica] pay for it
        from chunkd.replica.bucket import Bucket
        from chunkd.replica.layout import ReplicaURL
        from chunkd.replica.upload import PresentCache, RateLimiter

        self.config = config
        self.host = replica_host(config)
        self.keep_rounds = config.replica_keep_rounds or chunk_keep_rounds
        self.bucket = Bucket(
            ReplicaURL.parse(config.url), endpoint=config.endpoint, region=config.region
        )
        self._clients = clients
        self._backoff_max_s = backoff_max_s
        self._cache = PresentCache()
        self._limiter = RateLimiter(config.max_upload_rate)
        self._workers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="chunkd-replica-put")
        self._lock = threading.Lock()  # guards _dirty and the status fields below
        self._dirty: set[str] = set()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="replica", daemon=True)
        self._remote: dict[str, dict[int, ManifestVersion]] = {}  # stage thread: in the bucket
        self._lag: dict[str, tuple[int, int]] = {}
        self._behind_since: float | None = None  # monotonic; since when some lag is not 0
        self._uploaded_rounds = 0
        self._uploaded_bytes = 0
        self._last_upload: dict[str, object] | None = None
        self._last_error: str | None = None
        self._last_error_at: str | None = None
        self._last_prune: dict[str, object] | None = None
        self._orphan_locks: list[str] = []  # stage thread
        self._mark_cache: dict[str, tuple[str, frozenset[str]]] = {}  # stage thread
        self._log = structlog.get_logger("chunkd.replica").bind(replica=config.url, host=self.host)

    @classmethod
    def from_settings(cls, settings: Settings, clients: Clients) -> ReplicaStage | None:
        if settings.replica is None:
            return None
        return cls(settings.replica, chunk_keep_rounds=settings.chunk_keep_rounds, clients=clients)

    # -- other threads ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def round_committed(self, client_id: str, round_num: int) -> None:
        """The lanes' hook: never blocks."""
        with self._lock:
            self._dirty.add(client_id)
        self._wake.set()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop between two chunks; an unfinished round is uploaded again by the next start.

        The wait is short: a request hanging on a dead network must not hold up the daemon's
        exit, and the thread holds nothing that needs closing (a read-only connection).
        """
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._workers.shutdown(wait=False, cancel_futures=True)

    def status(self) -> dict[str, object]:
        with self._lock:
            lag = dict(self._lag)
            return {
                "url": self.config.url,
                "host": self.host,
                "lag_rounds": sum(n for n, _ in lag.values()),
                "lag_bytes": sum(b for _, b in lag.values()),
                # how long the bucket has lacked some round (0 when it holds all it should)
                "lag_s": 0.0
                if self._behind_since is None
                else round(time.monotonic() - self._behind_since, 1),
                "uploaded_rounds": self._uploaded_rounds,
                "uploaded_bytes": self._uploaded_bytes,
                "last_upload": self._last_upload,
                "last_error": self._last_error,
                "last_error_at": self._last_error_at,
                "last_prune": self._last_prune,
                "clients": {c: {"lag_rounds": n, "lag_bytes": b} for c, (n, b) in lag.items()},
            }

    # -- the stage thread ------------------------------------------------------------------------
    def _run(self) -> None:
        self._guard(self._release_dead_locks)
        next_full = 0.0
        next_prune = time.monotonic() + self.config.prune_interval_s
        backoff = 0.0
        while not self._stopping.is_set():
            now = time.monotonic()
            with self._lock:
                dirty, self._dirty = self._dirty, set()
            if now >= next_full:
                dirty |= set(self._clients())
                next_full = now + RECONCILE_S
            ok = all([self._guard(self._sync_client, cid) for cid in sorted(dirty)])
            if ok and time.monotonic() >= next_prune:
                ok = self._guard(self._prune)
                if ok:
                    next_prune = time.monotonic() + self.config.prune_interval_s
            if ok:
                backoff = 0.0
                wait = min(next_full, next_prune) - time.monotonic()
            else:
                backoff = min(max(1.0, backoff * 2), self._backoff_max_s)
                wait = backoff
                next_full = 0.0  # after an outage compare everything again
            self._wake.wait(max(0.0, wait))
            self._wake.clear()

    def _release_dead_locks(self) -> None:
        """A previous run of this daemon killed mid-prune left its lock: remove it now rather
        than let uploads wait for it to go stale."""
        from chunkd.replica.locks import release_dead_locks

        released = release_dead_locks(self.bucket, self.host)
        if released:
            self._log.info(log.REPLICA_LOCKS_RELEASED, locks=released)

    def _guard(self, work: Callable[..., None], *args: str) -> bool:
        """Run one unit of work; a failure is logged and recorded, never raised (the boundary)."""
        if self._stopping.is_set():
            return True
        try:
            work(*args)
            return True
        except Exception as e:  # the stage's boundary: the next attempt is the retry
            message = str(e) if isinstance(e, ChunkdError) else f"{type(e).__name__}: {e}"
            with self._lock:
                self._last_error = message
                self._last_error_at = _utc_now()
                if args:
                    self._dirty.add(args[0])
            fields = {"client": args[0]} if args else {}
            code = getattr(e, "code", "internal")
            if isinstance(e, ChunkdError):
                self._log.warning(log.REPLICA_FAILED, error=message, error_code=code, **fields)
            else:
                self._log.exception(log.REPLICA_FAILED, error=message, error_code=code, **fields)
            return False

    def _sync_client(self, client_id: str) -> None:
        db_path = self._clients().get(client_id)
        if db_path is None:
            return
        try:
            store = ChunkStore.open_reader(db_path)
        except NotFoundError:  # no database or no round yet
            return
        with store:
            local = {r.round_num: r for r in store.list_rounds()}
            remote = self._remote.get(client_id)
            pending = self._pending(local, remote or {})
            self._set_lag(client_id, local, pending)
            if remote is None:
                remote = self._load_remote(client_id)
                self._remote[client_id] = remote
                pending = self._pending(local, remote)
                self._set_lag(client_id, local, pending)
            if pending:
                self._upload(client_id, store, local, remote, pending)

    def _pending(
        self, local: Mapping[int, RoundInfo], remote: Mapping[int, ManifestVersion]
    ) -> list[int]:
        """Local rounds the bucket lacks or holds in another version, oldest first (by the
        order): of the newest ``keep_rounds`` by the order, local and remote together (a round
        local retention removed still counts at its place), so none that replica retention
        would remove at once."""
        candidates: list[RoundInfo | ManifestVersion] = list(local.values())
        candidates += [v for r, v in remote.items() if r not in local]
        return [
            v.round_num
            for v in newest(candidates, self.keep_rounds)
            if v is local.get(v.round_num) and not _same_version(remote.get(v.round_num), v)
        ]

    def _set_lag(self, client_id: str, local: Mapping[int, RoundInfo], pending: list[int]) -> None:
        with self._lock:
            self._lag[client_id] = (len(pending), sum(local[r].file_size for r in pending))
            behind = any(n for n, _ in self._lag.values())
            if not behind:
                self._behind_since = None
            elif self._behind_since is None:
                self._behind_since = time.monotonic()

    def _load_remote(self, client_id: str) -> dict[int, ManifestVersion]:
        """This client's manifests and the versions they hold (LIST, then a HEAD each)."""
        from chunkd.replica.fetch import list_rounds

        listed = list_rounds(self.bucket, host=self.host, client_id=client_id, versions=True)
        return {e.round_num: e.version for e in listed if e.version is not None}

    def _upload(
        self,
        client_id: str,
        store: ChunkStore,
        local: Mapping[int, RoundInfo],
        remote: dict[int, ManifestVersion],
        pending: list[int],
    ) -> None:
        from chunkd.replica.bucket import ReplicaError
        from chunkd.replica.locks import UPLOAD, ReplicaLock

        if self._orphan_locks:  # our locks from uploads the bucket failed under
            self.bucket.delete(self._orphan_locks)
            self._orphan_locks.clear()
        lock = ReplicaLock(self.bucket, UPLOAD, self.host)
        try:
            lock.acquire()
            lock.start_heartbeat()  # one throttled chunk PUT may outlast LOCK_STALE_S
            self._upload_locked(lock, client_id, store, local, remote, pending)
        finally:
            try:
                lock.release()
            except ReplicaError:  # else it would hold off every host's prune until stale
                self._orphan_locks.append(lock.key)

    def _upload_locked(
        self,
        lock: ReplicaLock,
        client_id: str,
        store: ChunkStore,
        local: Mapping[int, RoundInfo],
        remote: dict[int, ManifestVersion],
        pending: list[int],
    ) -> None:
        from chunkd.replica.locks import read_epoch
        from chunkd.replica.upload import upload_round

        self._cache.check_epoch(read_epoch(self.bucket))

        def keepalive() -> None:  # called before each chunk PUT
            if self._stopping.is_set():
                raise _Stopping
            lock.refresh()

        for index, round_num in enumerate(pending):
            if self._stopping.is_set():
                return
            try:
                result = upload_round(
                    self.bucket,
                    store,
                    host=self.host,
                    client_id=client_id,
                    round_num=round_num,
                    cache=self._cache,
                    limiter=self._limiter,
                    workers=self._workers,
                    keepalive=keepalive,
                )
            except _Stopping:  # the next start finds the round missing and uploads it
                return
            except (NotFoundError, IntegrityError):
                if _same_version(_current(store, round_num), local[round_num]):
                    raise
                continue  # removed or rewritten meanwhile: the next comparison decides
            remote[round_num] = _uploaded_version(result)
            self._set_lag(client_id, local, pending[index + 1 :])
            with self._lock:
                self._uploaded_rounds += 1
                self._uploaded_bytes += result.bytes_uploaded
                self._last_upload = {**result.log_fields(), "at": _utc_now()}
                self._last_error = None
            self._log.info(log.REPLICA_UPLOADED, **result.log_fields())

    def _prune(self) -> None:
        from chunkd.replica.prune import prune_replica

        try:
            result = prune_replica(
                self.bucket,
                host=self.host,
                keep_rounds=lambda _client: self.keep_rounds,
                grace_s=self.config.gc_grace_s,
                mark_cache=self._mark_cache,
            )
        except BusyError as e:  # another host is uploading or pruning: next interval
            self._log.info(log.REPLICA_PRUNED, skipped=str(e))
            return
        for client_id, removed in result.rounds_removed.items():
            remote = self._remote.get(client_id, {})
            for round_num in removed:
                remote.pop(round_num, None)
        with self._lock:
            self._last_prune = {**result.log_fields(), "at": _utc_now()}
        # one warning per manifest left in place (host, client, round, key, size, reason): what
        # an operator alerts on; the sweep's summary stays a warning when there were any
        for quarantined in result.quarantined:
            self._log.warning(log.REPLICA_QUARANTINED, **quarantined.log_fields())
        emit = self._log.warning if result.quarantined else self._log.info
        emit(log.REPLICA_PRUNED, **result.log_fields())


def _same_version(held: ManifestVersion | RoundInfo | None, version: RoundInfo) -> bool:
    """Whether the bucket (or the store) ``held`` this very version of the round."""
    return held is not None and (held.file_sha256, held.run, held.generation) == (
        version.file_sha256,
        version.run,
        version.generation,
    )


def _current(store: ChunkStore, round_num: int) -> RoundInfo | None:
    try:
        return store.get_round(round_num)
    except NotFoundError:
        return None


def _uploaded_version(result: UploadResult) -> ManifestVersion:
    from chunkd.replica.layout import ManifestVersion

    return ManifestVersion(result.round_num, result.run, result.generation, result.file_sha256)


def _utc_now() -> str:
    return utc_now_iso()
