"""Retention on the replica and the shared chunk sweep, safe while other hosts upload.

Chunks are shared by every host and client, so no host may delete one on what it alone knows.
Uploads and sweeps keep apart with lock objects and the gc-epoch (:mod:`chunkd.replica.locks`:
restic's prune against concurrent backups), plus a grace period on top: an unreferenced chunk is
deleted only if its LastModified is older than ``grace_s`` before the prune's lock, so chunks of
an upload whose lock went stale mid-way survive until a later prune. A prune whose own lock may
have gone stale (:class:`~chunkd.replica.locks.LockLost`) deletes nothing.

Mark and sweep: every manifest of every host is read (at most
:data:`~chunkd.replica.bounds.MAX_MANIFEST_BYTES`, checked against the listing before the GET)
and the chunks (and delta bases) it lists are marked. A manifest that cannot be *used* (too
large, damaged, a format this chunkd does not know) is quarantined
(:mod:`chunkd.replica.quarantine`): reported, and every unmarked chunk whose hash it spells is
kept, while the sweep goes on for everything else. A manifest that cannot be *fetched* (the
bucket fails) stops the sweep: deleting on partial knowledge is how data is lost.

Retention (which manifests go) is decided per client, for this host's clients only, in the
store's one order: :func:`chunkd.retention.newest` over the manifests' versions (run, round
number; read with a HEAD each, only for a client with more manifests than it keeps), so a rerun's
rounds are kept over an earlier run's higher-numbered ones, as locally.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from chunkd.errors import IntegrityError, NotFoundError
from chunkd.replica.bounds import MAX_MANIFEST_BYTES, MAX_SCAN_BYTES
from chunkd.replica.bucket import Bucket, ObjectInfo, ObjectTooLarge
from chunkd.replica.fetch import list_rounds
from chunkd.replica.layout import (
    RoundManifest,
    chunks_prefix,
    hash_of_chunk_key,
    hosts_prefix,
    manifest_key,
    parse_manifest_key,
)
from chunkd.replica.locks import PRUNE, ReplicaLock
from chunkd.replica.quarantine import Quarantined, named_hashes
from chunkd.retention import newest

#: Default grace period of an unreferenced chunk (by its LastModified) before a sweep deletes it.
GRACE_S = 3600.0


@dataclass(slots=True)
class ReplicaPruneResult:
    rounds_removed: dict[str, list[int]] = field(default_factory=dict)
    manifests_marked: int = 0
    chunks_kept: int = 0
    chunks_removed: int = 0
    bytes_removed: int = 0
    chunks_in_grace: int = 0
    #: unmarked chunks kept because a quarantined object spells their hash
    chunks_quarantined: int = 0
    quarantined: list[Quarantined] = field(default_factory=list)
    dry_run: bool = False

    def log_fields(self) -> dict[str, object]:
        return {
            "rounds_removed": self.rounds_removed,
            "manifests": self.manifests_marked,
            "manifests_quarantined": len(self.quarantined),
            "chunks_kept": self.chunks_kept,
            "chunks_removed": self.chunks_removed,
            "bytes_removed": self.bytes_removed,
            "chunks_in_grace": self.chunks_in_grace,
            "chunks_quarantined": self.chunks_quarantined,
            "quarantined": [q.log_fields() for q in self.quarantined],
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
        marked = _mark(bucket, host, lock, result, mark_cache)
        cutoff = lock.server_time - timedelta(seconds=grace_s)

        def listed() -> Iterator[tuple[str, int, datetime]]:
            for obj in bucket.list(chunks_prefix(url)):
                lock.refresh()  # a long listing must not let our lock go stale
                if (h := hash_of_chunk_key(url, obj.key)) is not None:
                    yield h, obj.size, obj.last_modified

        remove, result.chunks_kept, result.chunks_in_grace = plan_sweep(listed(), marked, cutoff)
        if result.quarantined and remove:
            spared = _named_by_quarantined(bucket, result.quarantined, {h for h, _ in remove}, lock)
            remove = [(h, size) for h, size in remove if h not in spared]
            result.chunks_quarantined = len(spared)
        result.chunks_removed = len(remove)
        result.bytes_removed = sum(size for _, size in remove)
        if not dry_run and remove:
            lock.refresh()  # LockLost if an upload may have started meanwhile: delete nothing
            bucket.delete([url.key("chunks", h[:2], h) for h, _ in remove])
    return result


def _mark(
    bucket: Bucket,
    host: str,
    lock: ReplicaLock,
    result: ReplicaPruneResult,
    mark_cache: MarkCache | None,
) -> set[str]:
    """Every chunk hash the usable manifests of every host need; the others go to
    ``result.quarantined``. Raises (the sweep stops) if the bucket fails."""
    url = bucket.url
    marked: set[str] = set()
    seen: set[str] = set()
    for obj in bucket.list(hosts_prefix(url)):
        parsed = parse_manifest_key(url, obj.key)
        if parsed is None:
            continue
        owner, client_id, round_num = parsed
        retired = result.rounds_removed.get(client_id, ()) if owner == host else ()
        if result.dry_run and round_num in retired:
            continue  # what the sweep would find once retention had run
        lock.refresh()
        cached = mark_cache.get(obj.key) if mark_cache is not None else None
        if cached is not None and obj.etag and cached[0] == obj.etag:
            needs = cached[1]
        else:
            try:
                needs = _needs(bucket, obj)
            except NotFoundError:
                continue  # removed by its own host's retention since the listing
            except (ObjectTooLarge, IntegrityError) as e:
                result.quarantined.append(
                    Quarantined(obj.key, owner, client_id, round_num, obj.size, str(e))
                )
                continue
            if mark_cache is not None and obj.etag:
                mark_cache[obj.key] = (obj.etag, needs)
        seen.add(obj.key)
        marked |= needs
        result.manifests_marked += 1
    if mark_cache is not None:
        for gone in set(mark_cache) - seen:
            del mark_cache[gone]
    return marked


def _needs(bucket: Bucket, obj: ObjectInfo) -> frozenset[str]:
    """The chunk hashes one manifest needs; ObjectTooLarge (by the listing: no GET) or
    IntegrityError if it cannot be used."""
    if obj.size > MAX_MANIFEST_BYTES:
        raise ObjectTooLarge(bucket.url, obj.key, obj.size, MAX_MANIFEST_BYTES)
    data, _ = bucket.get(obj.key, limit=MAX_MANIFEST_BYTES)
    manifest = RoundManifest.from_json(data, where=obj.key)
    # interned: the same chunk named by many manifests is one string in the cache
    return frozenset(sys.intern(h) for h in manifest.referenced_hashes())


def _named_by_quarantined(
    bucket: Bucket, quarantined: list[Quarantined], candidates: set[str], lock: ReplicaLock
) -> set[str]:
    """The ``candidates`` (chunks about to be deleted) that some quarantined object spells:
    each object streamed once, in pieces, up to MAX_SCAN_BYTES (a larger one names nothing)."""

    def refreshing(pieces: Iterable[bytes]) -> Iterator[bytes]:
        for piece in pieces:
            lock.refresh()  # a long scan must not let our lock go stale
            yield piece

    spared: set[str] = set()
    for q in quarantined:
        if q.size > MAX_SCAN_BYTES:
            continue
        try:
            stream = bucket.stream(q.key, limit=MAX_SCAN_BYTES)
            spared |= named_hashes(refreshing(stream), candidates - spared)
        except (NotFoundError, ObjectTooLarge):
            continue  # removed, or grown past any manifest, since the listing
    return spared
