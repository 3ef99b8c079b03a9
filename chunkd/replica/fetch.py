"""Read rounds back from the bucket: list them, and rebuild one byte-identical on any machine.

The rebuild is :func:`chunkd.restore.restore_round` itself, given a :class:`ReplicaRoundSource`
in place of a ChunkStore: the same file assembly, the same per-chunk SHA-256 check (every chunk's
raw bytes must hash to the name the manifest gives it) and the same whole-file check. Only where
the bytes come from differs: chunk objects, decoded with the codec and delta base that each
object's metadata names (resolved recursively, at most ``MAX_CHAIN_DEPTH`` links).

Nothing is read or allocated on a size the bucket states without a bound
(:mod:`chunkd.replica.bounds`): the manifest by its cap, each chunk object by the stored size
its raw size allows, each raw size (what decoding allocates) by the largest chunk chunkd writes
and by the manifest's own figure, the residue by what ingest keeps.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import zstandard

from chunkd import codec
from chunkd.errors import IntegrityError, NotFoundError
from chunkd.manifest import RoundLayout
from chunkd.replica.bounds import (
    MAX_CHUNK_RAW_BYTES,
    MAX_MANIFEST_BYTES,
    MAX_RESIDUE_BYTES,
    stored_limit,
)
from chunkd.replica.bucket import Bucket
from chunkd.replica.layout import (
    MAX_CHAIN_DEPTH,
    ChunkForm,
    ManifestVersion,
    RoundManifest,
    chunk_key,
    hosts_prefix,
    manifest_key,
    parse_manifest_key,
    rounds_prefix,
)
from chunkd.restore import RestoreResult, Write, restore_round
from chunkd.store import ChunkRef, StoredChunk

#: Decoded delta bases kept (a base is often shared by the chunks of one flat range only).
BASE_CACHE = 4


#: HEADs in flight when listing manifests with their versions.
HEAD_CONCURRENCY = 8


@dataclass(frozen=True, slots=True)
class ReplicaRound:
    """A manifest found by listing (no GET needed); its version only if listed ``versions``."""

    host: str
    client_id: str
    round_num: int
    manifest_bytes: int
    uploaded: str
    version: ManifestVersion | None = None

    @property
    def order_key(self) -> tuple[int, int, int]:
        """The store's order (run, round, generation); run 0 unless listed with ``versions``."""
        return self.version.order_key if self.version else (0, self.round_num, 0)


def list_rounds(
    bucket: Bucket,
    *,
    host: str | None = None,
    client_id: str | None = None,
    versions: bool = False,
) -> list[ReplicaRound]:
    """Every round manifest (of one host / client if given), ordered by host, client, round.

    With ``versions``, each manifest's version (run, generation, file SHA-256) is read with a
    HEAD, and each client's rounds are in the store's order, newest last. A manifest removed
    between the listing and its HEAD is left out.
    """
    url = bucket.url
    if host is not None and client_id is not None:
        prefix = rounds_prefix(url, host, client_id)
    elif host is not None:
        prefix = hosts_prefix(url) + host + "/"
    else:
        prefix = hosts_prefix(url)
    found = []
    for obj in bucket.list(prefix):
        parsed = parse_manifest_key(url, obj.key)
        if parsed is None or (client_id is not None and parsed[1] != client_id):
            continue
        found.append(
            ReplicaRound(*parsed, obj.size, obj.last_modified.isoformat(timespec="seconds"))
        )
    if versions:
        found = _with_versions(bucket, found)
    return sorted(found, key=lambda r: (r.host, r.client_id, r.order_key))


def _with_versions(bucket: Bucket, found: list[ReplicaRound]) -> list[ReplicaRound]:
    def head(r: ReplicaRound) -> ReplicaRound | None:
        key = manifest_key(bucket.url, r.host, r.client_id, r.round_num)
        info = bucket.head(key)
        if info is None:
            return None
        version = ManifestVersion.from_metadata(r.round_num, info.metadata, where=key)
        return replace(r, version=version)

    if not found:
        return []
    with ThreadPoolExecutor(min(HEAD_CONCURRENCY, len(found))) as pool:
        return [r for r in pool.map(head, found) if r is not None]


def read_manifest(bucket: Bucket, host: str, client_id: str, round_num: int) -> RoundManifest:
    key = manifest_key(bucket.url, host, client_id, round_num)
    try:
        data, _meta = bucket.get(key, limit=MAX_MANIFEST_BYTES)
    except NotFoundError:
        raise NotFoundError(
            f"replica {bucket.url}: host {host} client {client_id} has no round {round_num}"
        ) from None
    manifest = RoundManifest.from_json(data, where=key)
    if (manifest.host, manifest.client_id, manifest.round_num) != (host, client_id, round_num):
        raise IntegrityError(f"{key}: the manifest names another round")
    return manifest


def latest_round(bucket: Bucket, host: str, client_id: str) -> int:
    """The newest round in the store's order (run, then round number): the most recently
    written, as ``latest`` answers locally; a rerun's round 2 is newer than run A's round 6."""
    rounds = list_rounds(bucket, host=host, client_id=client_id, versions=True)
    if not rounds:
        raise NotFoundError(f"replica {bucket.url}: host {host} client {client_id} has no rounds")
    return rounds[-1].round_num


class ReplicaRoundSource:
    """The reads :func:`chunkd.restore.restore_round` makes of a ChunkStore (``read_round``,
    ``read_raw_chunk``; ``read_chunk`` too), answered from a bucket.

    ``read_raw_chunk`` runs on the restore's prefetch thread; the base cache has its own lock.
    """

    def __init__(self, bucket: Bucket, manifest: RoundManifest) -> None:
        self.bucket = bucket
        self.manifest = manifest
        #: the raw size the manifest states for each chunk it needs (checked when it was parsed)
        self._raw_sizes = {c.chunk_hash: c.form.raw_size for c in manifest.chunks}
        self._raw_sizes.update((b.chunk_hash, b.raw_size) for b in manifest.bases)
        self._bases: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def read_round(
        self, round_num: int, generation: int | None = None
    ) -> tuple[RoundLayout, bytes, list[ChunkRef]]:
        m = self.manifest
        if generation is not None:
            raise NotFoundError("the replica keeps the current version of each round only")
        if round_num != m.round_num:
            raise NotFoundError(f"round {round_num} is not this manifest's ({m.round_num})")
        try:
            # max_output_size is ignored when the frame states its size: check that size first
            if zstandard.frame_content_size(m.residue_zstd) > MAX_RESIDUE_BYTES:
                raise IntegrityError(
                    f"round {round_num}: residue declares more than {MAX_RESIDUE_BYTES} bytes"
                )
            residue = zstandard.ZstdDecompressor().decompress(
                m.residue_zstd, max_output_size=MAX_RESIDUE_BYTES
            )
        except zstandard.ZstdError as e:
            raise IntegrityError(f"round {round_num}: residue is damaged: {e}") from None
        refs = [ChunkRef(c.chunk_id, c.chunk_hash, c.parts_info, c.flat_size) for c in m.chunks]
        return m.layout, residue, refs

    def read_chunk(self, chunk_hash: str) -> StoredChunk:
        """The chunk's stored form, as ``ChunkStore.read_chunk`` gives it (for a caller that
        decodes itself); IntegrityError if the bucket lacks it.

        The GET is capped by the stored size a chunk of the manifest's raw size can have, and
        the raw size the object's metadata states (what decoding allocates) must be the
        manifest's: a chunk's raw size is a property of its bytes, whoever uploaded it.
        """
        stated = self._raw_sizes.get(chunk_hash)
        limit = stored_limit(MAX_CHUNK_RAW_BYTES if stated is None else stated)
        try:
            data, meta = self.bucket.get(chunk_key(self.bucket.url, chunk_hash), limit=limit)
        except NotFoundError:
            raise IntegrityError(
                f"chunk {chunk_hash} is referenced but not in the bucket"
            ) from None
        form = ChunkForm.from_metadata(chunk_hash, meta)
        if stated is not None and form.raw_size != stated:
            raise IntegrityError(
                f"chunk {chunk_hash}: the object says {form.raw_size} raw bytes, the manifest "
                f"{stated}"
            )
        return StoredChunk(chunk_hash, form.codec, data, form.raw_size, form.base)

    def read_raw_chunk(self, chunk_hash: str, known: Mapping[str, bytes] | None = None) -> bytes:
        """The chunk's raw bytes (the caller checks their SHA-256); ``known`` (local decoded
        chunks) does not apply to a bucket."""
        return self._decode(chunk_hash, 0)

    def _decode(self, chunk_hash: str, depth: int) -> bytes:
        if depth > MAX_CHAIN_DEPTH:
            raise IntegrityError(f"chunk {chunk_hash}: delta chain longer than {MAX_CHAIN_DEPTH}")
        stored = self.read_chunk(chunk_hash)
        base = self._base(stored.base_hash, depth) if stored.base_hash is not None else None
        try:
            return codec.decode(stored.codec, stored.data, stored.raw_size, base)
        except IntegrityError as e:
            raise IntegrityError(f"chunk {chunk_hash}: {e}") from None

    def _base(self, base_hash: str, depth: int) -> bytes:
        with self._lock:
            cached = self._bases.get(base_hash)
        if cached is not None:
            return cached
        raw = self._decode(base_hash, depth + 1)
        if hashlib.sha256(raw).hexdigest() != base_hash:
            raise IntegrityError(f"delta base {base_hash} does not match its SHA-256")
        with self._lock:
            self._bases[base_hash] = raw
            while len(self._bases) > BASE_CACHE:
                self._bases.popitem(last=False)
        return raw


def restore_from_replica(
    bucket: Bucket, host: str, client_id: str, round_num: int | None, write: Write
) -> RestoreResult:
    """Rebuild a round (the latest with None) from the bucket alone; every hash checked."""
    if round_num is None:
        round_num = latest_round(bucket, host, client_id)
    manifest = read_manifest(bucket, host, client_id, round_num)
    source = ReplicaRoundSource(bucket, manifest)
    return restore_round(source, round_num, write, recent=None)
