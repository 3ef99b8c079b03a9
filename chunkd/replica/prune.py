"""Retention on the replica and the shared chunk sweep, safe while other hosts upload.

Chunks are shared by every host and client, so no host may delete one on what it alone knows.
The model is restic's prune against concurrent backups, with lock objects:

* an uploader holds an ``upload`` lock (shared) while it checks which chunks exist and writes a
  manifest; a prune holds a ``prune`` lock (exclusive). Each writes its lock object *first* and
  then lists ``locks/``: an uploader that sees a live prune lock, or a prune that sees any other
  live lock, deletes its own and backs off. With S3's read-after-write consistency at least one
  of two racing parties sees the other, so a sweep never overlaps an upload.
* a lock is live while its LastModified is younger than :data:`LOCK_STALE_S`, measured against
  the LastModified of the caller's own fresh lock (the server's clock, never two hosts' clocks);
  holders rewrite theirs every :data:`LOCK_REFRESH_S`. A crashed host's lock goes stale. A daemon
  killed mid-prune and started again does not wait that long: each lock names its machine, boot
  and pid, and :func:`release_dead_locks` removes this host's locks whose process is gone.
* before sweeping, the prune rewrites ``gc-epoch``; an uploader reads it after taking its lock and
  forgets what it believed was present if it changed (its cache may name swept chunks).
* and a grace period on top: an unreferenced chunk is deleted only if its LastModified is older
  than ``grace_s`` before the prune's lock, so chunks of an upload whose lock went stale mid-way
  (a host paused for longer than the stale time) survive until a later prune.

Mark and sweep: every manifest of every host is read and the chunks (and delta bases) it lists are
marked; a manifest that cannot be read or parsed stops the sweep (deleting on partial knowledge is
how data is lost). Retention (which manifests go) is decided per client, for this host's clients
only, in the store's one order: :func:`chunkd.retention.newest` over the manifests' versions (run,
round number; read with a HEAD each, only for a client with more manifests than it keeps), so a
rerun's rounds are kept over an earlier run's higher-numbered ones, as locally.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from chunkd.errors import BusyError, NotFoundError
from chunkd.replica.bucket import Bucket, ObjectInfo, ReplicaError
from chunkd.replica.fetch import list_rounds
from chunkd.replica.layout import (
    RoundManifest,
    chunks_prefix,
    hash_of_chunk_key,
    hosts_prefix,
    manifest_key,
    parse_manifest_key,
)
from chunkd.retention import newest

LOCK_STALE_S = 1800.0
LOCK_REFRESH_S = 300.0
#: Default grace period of an unreferenced chunk (by its LastModified) before a sweep deletes it.
GRACE_S = 3600.0
UPLOAD, PRUNE = "upload", "prune"


class ReplicaLock:
    """A lock object in the bucket; see the module docstring."""

    def __init__(self, bucket: Bucket, kind: str, host: str) -> None:
        self.bucket = bucket
        self.kind = kind
        self.key = bucket.url.key("locks", f"{kind}-{host}-{secrets.token_hex(8)}")
        self._body = json.dumps(
            {"kind": kind, "host": host, "pid": os.getpid(), **_this_boot()}
        ).encode()
        self._written = 0.0
        self.server_time: datetime | None = None

    def acquire(self) -> ReplicaLock:
        """Write the lock, then look for conflicting live ones; BusyError (lock removed) if any."""
        self._write()
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
        self.bucket.put(self.key, self._body, content_type="application/json")
        self._written = time.monotonic()

    def refresh(self) -> None:
        """Rewrite the lock if it is due (call often; it costs nothing when not due)."""
        if time.monotonic() - self._written > LOCK_REFRESH_S:
            self._write()

    def release(self) -> None:
        self.bucket.delete([self.key])

    def __enter__(self) -> ReplicaLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


#: A lock object is a few dozen bytes; anything larger under ``locks/`` is not read.
_MAX_LOCK_BYTES = 4096


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
        if f"-{host}-" not in name or obj.size > _MAX_LOCK_BYTES:
            continue
        try:
            data, _ = bucket.get(obj.key)
            body = json.loads(data)
        except (NotFoundError, ValueError):
            continue
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
        data, _ = bucket.get(bucket.url.key("gc-epoch"))
    except NotFoundError:
        return ""
    return data.decode("ascii", "replace")


@dataclass(slots=True)
class ReplicaPruneResult:
    rounds_removed: dict[str, list[int]] = field(default_factory=dict)
    manifests_marked: int = 0
    chunks_kept: int = 0
    chunks_removed: int = 0
    bytes_removed: int = 0
    chunks_in_grace: int = 0
    dry_run: bool = False

    def log_fields(self) -> dict[str, object]:
        return {
            "rounds_removed": self.rounds_removed,
            "manifests": self.manifests_marked,
            "chunks_kept": self.chunks_kept,
            "chunks_removed": self.chunks_removed,
            "bytes_removed": self.bytes_removed,
            "chunks_in_grace": self.chunks_in_grace,
            "dry_run": self.dry_run,
        }


def plan_sweep(
    chunks: Iterable[tuple[str, int, datetime]],
    marked: set[str],
    cutoff: datetime,
) -> tuple[list[tuple[str, int]], int, int]:
    """Pure: ``(to delete [(hash, size)], kept, in grace)`` for the listed chunk objects."""
    remove, kept, grace = [], 0, 0
    for chunk_hash, size, modified in chunks:
        if chunk_hash in marked:
            kept += 1
        elif modified >= cutoff:
            grace += 1
        else:
            remove.append((chunk_hash, size))
    return remove, kept, grace


#: What the mark phase learnt from each manifest: key -> (ETag, the chunk hashes it needs).
MarkCache = dict[str, tuple[str, frozenset[str]]]


def _retired(bucket: Bucket, host: str, client_id: str, rounds: list[int], keep: int) -> list[int]:
    """The round numbers whose manifests retention removes: all but the newest ``keep`` in the
    store's order. Their versions are read (a HEAD each) only when some must go."""
    if keep == 0 or len(rounds) <= keep:
        return []
    listed = list_rounds(bucket, host=host, client_id=client_id, versions=True)
    kept = {r.round_num for r in newest(listed, keep)}
    # listed again, under our prune lock: no upload of this host changes the set meanwhile
    return sorted(r.round_num for r in listed if r.round_num not in kept)


def prune_replica(
    bucket: Bucket,
    *,
    host: str,
    keep_rounds: Callable[[str], int],
    grace_s: float = GRACE_S,
    dry_run: bool = False,
    mark_cache: MarkCache | None = None,
) -> ReplicaPruneResult:
    """Apply retention to this host's clients, then mark and sweep the shared chunks.

    ``keep_rounds(client_id)`` gives each client's ``replica_keep_rounds`` (0 keeps all). Raises
    BusyError if another host is uploading or pruning (try again later). ``mark_cache``, kept by
    the caller between prunes, saves reading a manifest whose ETag has not changed.
    """
    url = bucket.url
    result = ReplicaPruneResult(dry_run=dry_run)
    with ReplicaLock(bucket, PRUNE, host) as lock:
        assert lock.server_time is not None
        by_client: dict[str, list[int]] = {}
        for obj in bucket.list(hosts_prefix(url) + host + "/"):
            parsed = parse_manifest_key(url, obj.key)
            if parsed is not None and parsed[0] == host:
                by_client.setdefault(parsed[1], []).append(parsed[2])
        for client_id, rounds in sorted(by_client.items()):
            remove = _retired(bucket, host, client_id, rounds, keep_rounds(client_id))
            if remove:
                result.rounds_removed[client_id] = remove
                if not dry_run:
                    bucket.delete([manifest_key(url, host, client_id, r) for r in remove])
        if not dry_run:
            bucket.put(
                url.key("gc-epoch"), secrets.token_hex(16).encode(), content_type="text/plain"
            )
        marked: set[str] = set()
        seen: set[str] = set()
        for obj in bucket.list(hosts_prefix(url)):
            parsed = parse_manifest_key(url, obj.key)
            if parsed is None:
                continue
            owner, client_id, round_num = parsed
            if dry_run and owner == host and round_num in result.rounds_removed.get(client_id, ()):
                continue  # what the sweep would find once retention had run
            cached = mark_cache.get(obj.key) if mark_cache is not None else None
            if cached is not None and obj.etag and cached[0] == obj.etag:
                needs = cached[1]
            else:
                try:
                    data, _ = bucket.get(obj.key)
                except NotFoundError:
                    continue  # removed by its own host's retention since the listing
                manifest = RoundManifest.from_json(data, where=obj.key)
                # interned: the same chunk named by many manifests is one string in the cache
                needs = frozenset(sys.intern(h) for h in manifest.referenced_hashes())
                if mark_cache is not None and obj.etag:
                    mark_cache[obj.key] = (obj.etag, needs)
            seen.add(obj.key)
            marked |= needs
            result.manifests_marked += 1
            lock.refresh()
        if mark_cache is not None:
            for gone in set(mark_cache) - seen:
                del mark_cache[gone]
        cutoff = lock.server_time - timedelta(seconds=grace_s)

        def listed() -> Iterator[tuple[str, int, datetime]]:
            for obj in bucket.list(chunks_prefix(url)):
                lock.refresh()  # a long listing must not let our lock go stale
                if (h := hash_of_chunk_key(url, obj.key)) is not None:
                    yield h, obj.size, obj.last_modified

        remove, result.chunks_kept, result.chunks_in_grace = plan_sweep(listed(), marked, cutoff)
        result.chunks_removed = len(remove)
        result.bytes_removed = sum(size for _, size in remove)
        if not dry_run and remove:
            bucket.delete([url.key("chunks", h[:2], h) for h, _ in remove])
    return result
