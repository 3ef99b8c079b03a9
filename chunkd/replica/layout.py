"""Where things live in the bucket and what a round manifest holds (docs/REPLICA.md).

Pure: keys and JSON only. Every host and client shares one content-addressed chunk space::

    <prefix>/chunks/<sha256[:2]>/<sha256>                 a chunk's stored form
    <prefix>/hosts/<host>/clients/<client>/rounds/<round>   a round manifest (JSON)
    <prefix>/locks/<kind>-<host>-<token>                  upload / prune locks (JSON)
    <prefix>/gc-epoch                                     rewritten by every chunk sweep

A chunk object's body is exactly the bytes chunkd stores for it (raw, or the codec's form); its
object metadata names the codec, the raw size and, for a delta, its base chunk. The hash always
names the raw bytes, so two hosts that store one chunk with different codecs still share one
object: whichever was uploaded first. A manifest therefore records, per chunk, the codec and base
*of the object in the bucket*, and lists every base its chunks need (the closure), so the chunk
sweep can mark bases without reading chunk metadata.

A manifest holds the current version of its round number: with the version's ``run`` and
``generation`` (the store's order, :attr:`chunkd.store.RoundInfo.order_key`) in its body and, with
the file's SHA-256, in its object metadata, so that a HEAD tells which version the bucket holds
and where it stands in the order. A manifest written before these fields existed is run 0,
generation 0.

Every size a manifest states for a chunk (``raw_size``, ``flat_size``) is checked against
:mod:`chunkd.replica.bounds` when it is parsed: a manifest naming a chunk no chunkd can write is
damaged, and is refused before anything is allocated for that chunk.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field

from chunkd.errors import IntegrityError, RequestError
from chunkd.manifest import RoundLayout
from chunkd.replica.bounds import check_chunk_size

MANIFEST_FORMAT = "chunkd-replica-round"
MANIFEST_VERSION = 1
#: Object metadata keys (sent as ``x-amz-meta-<key>``) of a chunk object.
META_CODEC = "chunkd-codec"
META_RAW_SIZE = "chunkd-raw-size"
META_BASE = "chunkd-base"
#: Object metadata keys of a round manifest: which version of the round it holds.
META_FILE_SHA256 = "chunkd-file-sha256"
META_RUN = "chunkd-run"
META_GENERATION = "chunkd-generation"
#: A delta chain longer than this is treated as damage (a loop, or a runaway encoder).
MAX_CHAIN_DEPTH = 64

_HASH = re.compile(r"[0-9a-f]{64}")
#: A host name is one path segment of the key; the same alphabet as client ids, a bit longer.
_HOST = re.compile(r"[A-Za-z0-9_.-]{1,128}")


@dataclass(frozen=True, slots=True)
class ReplicaURL:
    """``s3://bucket/prefix`` split; ``prefix`` has no leading or trailing slash."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> ReplicaURL:
        if not url.startswith("s3://"):
            raise RequestError(f"replica url must look like s3://bucket/prefix, got {url!r}")
        bucket, _, prefix = url[len("s3://") :].partition("/")
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
            raise RequestError(f"replica url {url!r}: {bucket!r} is not a valid S3 bucket name")
        prefix = prefix.strip("/")
        if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
            raise RequestError(f"replica url {url!r}: the prefix has an empty or dot segment")
        return cls(bucket, prefix)

    def key(self, *parts: str) -> str:
        return "/".join([self.prefix, *parts] if self.prefix else parts)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def check_host(host: str) -> str:
    if _HOST.fullmatch(host) is None or host in (".", ".."):
        raise RequestError(f"replica host {host!r}: must be 1 to 128 of A-Z a-z 0-9 _ . -")
    return host


def check_hash(chunk_hash: str) -> str:
    if _HASH.fullmatch(chunk_hash) is None:
        raise IntegrityError(f"{chunk_hash!r} is not a lowercase hex SHA-256")
    return chunk_hash


def chunk_key(url: ReplicaURL, chunk_hash: str) -> str:
    check_hash(chunk_hash)
    return url.key("chunks", chunk_hash[:2], chunk_hash)


def chunks_prefix(url: ReplicaURL) -> str:
    return url.key("chunks") + "/"


def hosts_prefix(url: ReplicaURL) -> str:
    return url.key("hosts") + "/"


def rounds_prefix(url: ReplicaURL, host: str, client_id: str) -> str:
    return url.key("hosts", host, "clients", client_id, "rounds") + "/"


def manifest_key(url: ReplicaURL, host: str, client_id: str, round_num: int) -> str:
    return rounds_prefix(url, host, client_id) + str(round_num)


def parse_manifest_key(url: ReplicaURL, key: str) -> tuple[str, str, int] | None:
    """``(host, client, round)`` of a manifest key, or None for anything else under hosts/."""
    rest = key.removeprefix(hosts_prefix(url))
    parts = rest.split("/")
    if rest == key or len(parts) != 5 or parts[1] != "clients" or parts[3] != "rounds":
        return None
    if not parts[4].isdigit():
        return None
    return parts[0], parts[2], int(parts[4])


def hash_of_chunk_key(url: ReplicaURL, key: str) -> str | None:
    name = key.removeprefix(chunks_prefix(url))
    if name == key:
        return None
    shard, _, chunk_hash = name.partition("/")
    if _HASH.fullmatch(chunk_hash) is None or shard != chunk_hash[:2]:
        return None
    return chunk_hash


@dataclass(frozen=True, slots=True)
class ChunkForm:
    """How a chunk object in the bucket is encoded: what decoding it needs."""

    chunk_hash: str
    codec: str
    raw_size: int
    base: str | None

    def metadata(self) -> dict[str, str]:
        meta = {META_CODEC: self.codec, META_RAW_SIZE: str(self.raw_size)}
        if self.base is not None:
            meta[META_BASE] = self.base
        return meta

    @classmethod
    def from_metadata(cls, chunk_hash: str, meta: dict[str, str]) -> ChunkForm:
        try:
            codec_name = meta[META_CODEC]
            raw_size = int(meta[META_RAW_SIZE])
        except (KeyError, ValueError) as e:
            raise IntegrityError(f"chunk {chunk_hash}: object metadata is missing {e}") from None
        check_chunk_size(chunk_hash, raw_size)
        base = meta.get(META_BASE) or None
        if base is not None:
            check_hash(base)
        return cls(chunk_hash, codec_name, raw_size, base)


@dataclass(frozen=True, slots=True)
class ManifestChunk:
    chunk_id: int
    chunk_hash: str
    parts_info: str
    flat_size: int
    form: ChunkForm


@dataclass(frozen=True, slots=True)
class RoundManifest:
    """One round in the bucket: enough, with the chunk objects, to rebuild the file."""

    host: str
    client_id: str
    round_num: int
    layout: RoundLayout
    residue_zstd: bytes
    chunks: tuple[ManifestChunk, ...]
    bases: tuple[ChunkForm, ...]
    source_path: str | None
    created_at: str
    uploaded_at: str
    run: int = 0
    generation: int = 0
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def file_sha256(self) -> str:
        return self.layout.file_sha256

    @property
    def version(self) -> ManifestVersion:
        return ManifestVersion(self.round_num, self.run, self.generation, self.file_sha256)

    def metadata(self) -> dict[str, str]:
        """The manifest object's metadata: its version, readable with a HEAD."""
        return self.version.metadata()

    @property
    def file_size(self) -> int:
        return self.layout.file_size

    def referenced_hashes(self) -> set[str]:
        """Every chunk object this round needs: its chunks and their delta bases."""
        return {c.chunk_hash for c in self.chunks} | {b.chunk_hash for b in self.bases}

    def to_json(self) -> bytes:
        doc = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "host": self.host,
            "client": self.client_id,
            "round": self.round_num,
            "run": self.run,
            "generation": self.generation,
            "file_sha256": self.layout.file_sha256,
            "file_size": self.layout.file_size,
            "source_path": self.source_path,
            "created_at": self.created_at,
            "uploaded_at": self.uploaded_at,
            "layout": json.loads(self.layout.to_json()),
            "residue": {
                "encoding": "zstd+base64",
                "data": base64.b64encode(self.residue_zstd).decode("ascii"),
            },
            "chunks": [
                {
                    "chunk_id": c.chunk_id,
                    "hash": c.chunk_hash,
                    "parts": json.loads(c.parts_info),
                    "flat_size": c.flat_size,
                    **_form_json(c.form),
                }
                for c in self.chunks
            ],
            "bases": [{"hash": b.chunk_hash, **_form_json(b)} for b in self.bases],
            **self.extra,
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes, *, where: str) -> RoundManifest:
        """Parse a manifest; IntegrityError naming ``where`` if it is not one."""
        try:
            doc = json.loads(data)
            if doc.get("format") != MANIFEST_FORMAT or doc.get("version") != MANIFEST_VERSION:
                raise ValueError(f"not a {MANIFEST_FORMAT} v{MANIFEST_VERSION} document")
            residue = doc["residue"]
            if residue.get("encoding") != "zstd+base64":
                raise ValueError(f"unknown residue encoding {residue.get('encoding')!r}")
            chunks = tuple(
                ManifestChunk(
                    int(c["chunk_id"]),
                    check_hash(c["hash"]),
                    json.dumps(c["parts"], separators=(",", ":")),
                    check_chunk_size(c["hash"], c["flat_size"], what="flat size"),
                    _form_of(c),
                )
                for c in doc["chunks"]
            )
            return cls(
                host=str(doc["host"]),
                client_id=str(doc["client"]),
                round_num=int(doc["round"]),
                layout=RoundLayout.from_json(json.dumps(doc["layout"])),
                residue_zstd=base64.b64decode(residue["data"], validate=True),
                chunks=chunks,
                bases=tuple(_form_of(b) for b in doc["bases"]),
                source_path=doc.get("source_path"),
                created_at=str(doc.get("created_at", "")),
                uploaded_at=str(doc.get("uploaded_at", "")),
                run=_count(doc.get("run", 0)),  # absent: written before runs, run 0
                generation=_count(doc.get("generation", 0)),
            )
        except (ValueError, KeyError, TypeError, AttributeError, IntegrityError) as e:
            raise IntegrityError(f"{where}: damaged round manifest: {e}") from None
        except RecursionError:  # JSON nested deeper than the parser goes: no manifest is
            raise IntegrityError(f"{where}: damaged round manifest: nested too deep") from None


@dataclass(frozen=True, slots=True)
class ManifestVersion:
    """Which version of a round a manifest holds, and its place in the store's order."""

    round_num: int
    run: int
    generation: int
    file_sha256: str

    @property
    def order_key(self) -> tuple[int, int, int]:
        """As :attr:`chunkd.store.RoundInfo.order_key`: newest last."""
        return (self.run, self.round_num, self.generation)

    def metadata(self) -> dict[str, str]:
        return {
            META_FILE_SHA256: self.file_sha256,
            META_RUN: str(self.run),
            META_GENERATION: str(self.generation),
        }

    @classmethod
    def from_metadata(cls, round_num: int, meta: dict[str, str], *, where: str) -> ManifestVersion:
        """From a manifest object's metadata; a manifest without run / generation is 0 / 0."""
        try:
            run = _count(meta.get(META_RUN, "0"))
            generation = _count(meta.get(META_GENERATION, "0"))
        except ValueError as e:
            raise IntegrityError(f"{where}: damaged manifest metadata: {e}") from None
        return cls(round_num, run, generation, meta.get(META_FILE_SHA256, ""))


def _count(value: object) -> int:
    """A run or generation: a non-negative integer (JSON number or metadata text)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{value!r} is not a count")
    number = int(value)
    if number < 0:
        raise ValueError(f"{value!r} is negative")
    return number


def _form_json(form: ChunkForm) -> dict[str, object]:
    return {"codec": form.codec, "raw_size": form.raw_size, "base": form.base}


def _form_of(doc: dict[str, object]) -> ChunkForm:
    """A chunk's form as a manifest states it; its sizes are checked before anything is made
    for them (a JSON number may be 2**40, or not an integer at all)."""
    base = doc.get("base")
    chunk_hash = check_hash(str(doc["hash"]))
    return ChunkForm(
        chunk_hash,
        str(doc["codec"]),
        check_chunk_size(chunk_hash, doc["raw_size"]),  # type: ignore[arg-type]
        check_hash(str(base)) if base is not None else None,
    )
