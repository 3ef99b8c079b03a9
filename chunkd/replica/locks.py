"""Lock objects in the bucket, and the gc-epoch: how uploads and the chunk sweep keep apart.

The model is restic's prune against concurrent backups (docs/REPLICA.md):

* an uploader holds an ``upload`` lock (shared) while it checks which chunks exist and writes a
  manifest; a prune holds a ``prune`` lock (exclusive). Each writes its lock object *first* and
  then lists ``locks/``: an uploader that sees a live prune lock, or a prune that sees any other
  live lock, deletes its own and backs off. With S3's read-after-write consistency at least one
  of two racing parties sees the other, so a sweep never overlaps an upload.
* a lock is live while its LastModified is younger than :data:`LOCK_STALE_S`, measured against
  the LastModified of the caller's own fresh lock (the server's clock, never two hosts' clocks).
  A holder keeps its lock live with a **heartbeat** (:meth:`ReplicaLock.start_heartbeat`), a
  thread that rewrites it every :data:`LOCK_REFRESH_S` whatever the holder is doing: one chunk
  PUT may take hours under a low ``max_upload_rate`` or on a slow link, and a lock refreshed only
  between chunks went stale during it, letting another host's sweep delete chunks the upload was
  about to reference (issue 19).
* a holder that could not rewrite its lock for longer than :func:`lost_after_s` (the heartbeat
  failed, or the host was paused or suspended) may have been seen as stale: a sweep may have run.
  :meth:`ReplicaLock.refresh`, which holders call before each chunk and before the manifest (and
  a prune before it deletes), then raises :class:`LockLost` and the work is redone from a fresh
  lock. Elapsed time is measured on ``CLOCK_BOOTTIME``, which counts a suspend.
* a crashed host's lock goes stale. A daemon killed mid-prune and started again does not wait
  that long: each lock names its machine, boot and pid, and :func:`release_dead_locks` removes
  this host's locks whose process is gone.
* before sweeping, a prune rewrites ``gc-epoch``; an uploader reads it after taking its lock and
  forgets what it believed was present if it changed (its cache may name swept chunks).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import threading
import time
from datetime import datetime, timedelta

from chunkd.errors import BusyError, NotFoundError
from chunkd.replica.bounds import MAX_EPOCH_BYTES, MAX_LOCK_BYTES
from chunkd.replica.bucket import Bucket, ObjectInfo, ObjectTooLarge, ReplicaError

LOCK_STALE_S = 1800.0
LOCK_REFRESH_S = 300.0
UPLOAD, PRUNE = "upload", "prune"


class LockLost(ReplicaError):
    """Our lock was not rewritten for so long that others may have seen it stale."""


def lost_after_s() -> float:
    """Seconds without a successful rewrite after which a holder must assume its lock went
    stale: a refresh interval before :data:`LOCK_STALE_S` (a PUT's own latency fits in it)."""
    return max(LOCK_STALE_S - LOCK_REFRESH_S, LOCK_STALE_S / 2)


def _elapsed_clock() -> float:
    """A clock that runs while the host is suspended (a suspended holder's lock goes stale)."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(boottime) if boottime is not None else time.monotonic()


class ReplicaLock:
    """A lock object in the bucket; see the module docstring. ``with`` acquires it and runs its
    heartbeat; :meth:`acquire` alone does not (a test's crashed holder)."""

    def __init__(self, bucket: Bucket, kind: str, host: str) -> None:
        self.bucket = bucket
        self.kind = kind
        self.key = bucket.url.key("locks", f"{kind}-{host}-{secrets.token_hex(8)}")
        self._body = json.dumps(
            {"kind": kind, "host": host, "pid": os.getpid(), **_this_boot()}
        ).encode()
        self._written = 0.0  # _elapsed_clock() at the start of the last successful PUT
        self._mutex = threading.Lock()  # one PUT or DELETE of the lock object at a time
        self._released = False
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self.server_time: datetime | None = None

    def acquire(self) -> ReplicaLock:
        """Write the lock, then look for conflicting live ones; BusyError (lock removed) if any."""
        with self._mutex:
            self._write_locked()
        mine: ObjectInfo | None = None
        others: list[ObjectInfo] = []
        for obj in self.bucket.list(self.bucket.url.key("locks") + "/"):
            if obj.key == self.key:
                mine = obj
            else:
                others.append(obj)
        if mine is None:
            raise ReplicaError(f"replica {self.bucket.url}: lock {self.key} vanished after PUT")
        self.server_time = mine.last_modified
        stale_before = mine.last_modified - timedelta(seconds=LOCK_STALE_S)
        for obj in others:
            name = obj.key.rsplit("/", 1)[-1]
            if obj.last_modified < stale_before:
                continue
            if self.kind == PRUNE or name.startswith(PRUNE + "-"):
                self.release()
                raise BusyError(f"replica {self.bucket.url}: {name} is held; {self.kind} waits")
        return self

    def _write(self) -> None:
        """Rewrite the lock object (tests forge locks with it)."""
        with self._mutex:
            self._write_locked()

    def _write_locked(self) -> None:
        started = _elapsed_clock()
        self.bucket.put(self.key, self._body, content_type="application/json")
        self._written = started

    def start_heartbeat(self) -> None:
        """Rewrite the lock every :data:`LOCK_REFRESH_S` from a thread of its own until
        :meth:`release`, so that no single long step (a throttled chunk PUT) lets it go stale."""
        if self._beat is None:
            self._beat = threading.Thread(
                target=self._heartbeat, name="chunkd-replica-lock", daemon=True
            )
            self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(LOCK_REFRESH_S):
            with self._mutex:
                if self._released:
                    return
                # a failure is tried again next beat; the holder's refresh() says when it is lost
                with contextlib.suppress(ReplicaError):
                    self._write_locked()

    def refresh(self) -> None:
        """Raise LockLost if the lock may have gone stale; else rewrite it if it is due (call
        often: it costs nothing when not due)."""
        with self._mutex:
            since = _elapsed_clock() - self._written
            if since > lost_after_s():
                raise LockLost(
                    f"replica {self.bucket.url}: lock {self.key} was not rewritten for "
                    f"{since:.0f} s: another host may have seen it stale; starting over"
                )
            if since > LOCK_REFRESH_S:
                self._write_locked()

    def release(self) -> None:
        """Stop the heartbeat and delete the lock; no heartbeat writes it again after this."""
        self._stop.set()
        with self._mutex:
            self._released = True
            self.bucket.delete([self.key])

    def __enter__(self) -> ReplicaLock:
        self.acquire()
        self.start_heartbeat()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _this_boot() -> dict[str, str]:
    """The machine and boot a lock was written in (empty where the kernel does not say)."""
    found = {}
    for name, path in (("machine", "/etc/machine-id"), ("boot", "/proc/sys/kernel/random/boot_id")):
        try:
            with open(path, encoding="ascii") as f:
                found[name] = f.read(64).strip()
        except OSError:
            pass
    return found


def _process_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True  # cannot tell: leave it to go stale
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def release_dead_locks(bucket: Bucket, host: str) -> list[str]:
    """Delete this host's lock objects left by a process of this machine that is gone (a daemon
    killed mid-prune, then started again), so its uploads need not wait :data:`LOCK_STALE_S`.

    Only locks that say they were written on this machine are touched: in this boot by a pid that
    no longer runs, or in an earlier boot. Another machine using the same host name (a
    misconfiguration) keeps its locks; they go stale as usual. Returns the keys deleted."""
    here = _this_boot()
    if not here.get("machine"):
        return []
    dead = []
    for obj in bucket.list(bucket.url.key("locks") + "/"):
        name = obj.key.rsplit("/", 1)[-1]
        if f"-{host}-" not in name or obj.size > MAX_LOCK_BYTES:
            continue
        try:
            data, _ = bucket.get(obj.key, limit=MAX_LOCK_BYTES)
            body = json.loads(data)
        except (NotFoundError, ObjectTooLarge, ValueError):
            continue  # gone, or grown since the listing: not a lock of ours
        if not isinstance(body, dict) or body.get("host") != host:
            continue
        if body.get("machine") != here["machine"]:
            continue
        if body.get("boot") != here.get("boot") or not _process_alive(body.get("pid")):
            dead.append(obj.key)
    if dead:
        bucket.delete(dead)
    return dead


def read_epoch(bucket: Bucket) -> str:
    """The bucket's gc-epoch: changes whenever a chunk sweep may have deleted something."""
    try:
        data, _ = bucket.get(bucket.url.key("gc-epoch"), limit=MAX_EPOCH_BYTES)
    except NotFoundError:
        return ""
    return data.decode("ascii", "replace")
