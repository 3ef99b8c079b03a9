"""The S3 bucket, through boto3: the only module that imports boto3 or botocore.

Why boto3 rather than obstore: boto3 reads the whole standard credential chain (environment,
``~/.aws`` shared files and profiles, web identity, ECS/EC2 instance roles) with no code of ours,
exposes user metadata on HEAD/GET (the chunk's codec and base live there) and conditional PUT
(``If-None-Match: *``), and is the client every S3-compatible server tests against. obstore is
faster for bulk transfers, but chunkd's objects are at most ``max_chunk_bytes`` and the upload
rate is capped anyway; the extra native dependency buys nothing here.

Every GET has a cap (:mod:`chunkd.replica.bounds`): an object larger than it is refused with
:class:`ObjectTooLarge` and never read whole. Every library error is turned into
:class:`ReplicaError` (or None / NotFoundError for a missing object) here, so no other module
sees botocore's exception types.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import boto3
import botocore.exceptions
from botocore.config import Config
from botocore.response import StreamingBody

from chunkd.errors import ChunkdError, NotFoundError
from chunkd.replica.layout import ReplicaURL

#: One request's own timeouts and retries; the upload stage retries whole rounds on top.
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0
REQUEST_ATTEMPTS = 3
#: Connections kept per client: enough for the upload workers plus the stage's own calls.
MAX_POOL_CONNECTIONS = 16
#: DeleteObjects takes at most this many keys a call.
DELETE_BATCH = 1000
#: A capped GET without a Content-Length, or a stream, reads this much at a time.
READ_PIECE = 1 << 20


class ReplicaError(ChunkdError):
    """The object store failed or refused a request (unreachable, denied, full, ...)."""


class ObjectTooLarge(ReplicaError):
    """An object larger than what it should be (:mod:`chunkd.replica.bounds`), refused before
    its body is read, or as soon as the body passes the cap when its length was not sent."""

    def __init__(self, url: ReplicaURL, key: str, size: int | None, limit: int) -> None:
        self.key = key
        self.size = size
        self.limit = limit
        stated = f"{size} bytes" if size is not None else f"more than {limit} bytes (unannounced)"
        super().__init__(f"replica {url}: {key} is {stated}, over its cap of {limit} bytes")


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    last_modified: datetime
    metadata: dict[str, str]
    etag: str = ""


class Bucket:
    """One bucket; thread-safe (boto3 clients may be shared between threads)."""

    def __init__(
        self, url: ReplicaURL, *, endpoint: str = "", region: str = "", anonymous: bool = False
    ) -> None:
        self.url = url
        config = Config(
            connect_timeout=CONNECT_TIMEOUT_S,
            read_timeout=READ_TIMEOUT_S,
            retries={"max_attempts": REQUEST_ATTEMPTS, "mode": "standard"},
            max_pool_connections=MAX_POOL_CONNECTIONS,
            # custom endpoints (MinIO, SeaweedFS, Ceph) rarely have wildcard DNS for buckets
            s3={"addressing_style": "path" if endpoint else "auto"},
            signature_version=botocore.UNSIGNED if anonymous else None,
        )
        try:
            session = boto3.session.Session(region_name=region or None)
            self._s3 = session.client("s3", endpoint_url=endpoint or None, config=config)
        except botocore.exceptions.BotoCoreError as e:
            raise ReplicaError(f"replica {url}: cannot set up the S3 client: {e}") from None

    def _fail(self, what: str, key: str, e: Exception) -> ReplicaError:
        return ReplicaError(f"replica {self.url}: {what} {key}: {_describe(e)}")

    def head(self, key: str) -> ObjectInfo | None:
        """The object's size, time and metadata; None if it does not exist."""
        try:
            r = self._s3.head_object(Bucket=self.url.bucket, Key=key)
        except botocore.exceptions.ClientError as e:
            if _status(e) == 404:
                return None
            raise self._fail("HEAD", key, e) from None
        except botocore.exceptions.BotoCoreError as e:
            raise self._fail("HEAD", key, e) from None
        return ObjectInfo(key, r["ContentLength"], r["LastModified"], r.get("Metadata", {}))

    def get(self, key: str, *, limit: int) -> tuple[bytes, dict[str, str]]:
        """The object's body and metadata; NotFoundError if it does not exist, ObjectTooLarge
        (nothing read) if it is larger than ``limit`` bytes.

        The response's Content-Length is checked before a byte of the body is read; HTTP framing
        then reads no more than it announced. A response without one (chunked) is read in
        pieces and refused as soon as it passes the cap, so a server that does not say, or
        lies, makes us hold at most ``limit`` plus one piece.
        """
        with self._body(key, limit) as (body, length, metadata):
            if length is not None:
                data = body.read(length) if length else b""  # one buffer, in the usual case
                while len(data) < length and (more := body.read(length - len(data))):
                    data += more
                if len(data) != length:
                    raise ReplicaError(
                        f"replica {self.url}: GET {key}: {len(data)} of {length} bytes arrived"
                    )
            else:
                data = b"".join(self._pieces(body, key, limit))
        return data, metadata

    def stream(self, key: str, *, limit: int) -> Iterator[bytes]:
        """The object's body in pieces of at most :data:`READ_PIECE` bytes, for a reader that
        needs none of it whole (memory: one piece); errors as :meth:`get`."""
        with self._body(key, limit) as (body, _length, _metadata):
            yield from self._pieces(body, key, limit)

    @contextlib.contextmanager
    def _body(
        self, key: str, limit: int
    ) -> Iterator[tuple[StreamingBody, int | None, dict[str, str]]]:
        """The open response: body, Content-Length (None if not sent) and metadata; closed on
        exit, and botocore's errors, raised while opening or reading it, made ours."""
        try:
            r = self._s3.get_object(Bucket=self.url.bucket, Key=key)
            with contextlib.closing(r["Body"]) as body:
                length = r.get("ContentLength")
                if length is not None and length > limit:
                    raise ObjectTooLarge(self.url, key, length, limit)
                yield body, length, r.get("Metadata", {})
        except botocore.exceptions.ClientError as e:
            if _status(e) == 404:
                raise NotFoundError(f"replica {self.url}: no object {key}") from None
            raise self._fail("GET", key, e) from None
        except botocore.exceptions.BotoCoreError as e:
            raise self._fail("GET", key, e) from None

    def _pieces(self, body: StreamingBody, key: str, limit: int) -> Iterator[bytes]:
        total = 0
        while piece := body.read(READ_PIECE):
            total += len(piece)
            if total > limit:
                raise ObjectTooLarge(self.url, key, None, limit)
            yield piece

    def put(
        self,
        key: str,
        body: bytes,
        *,
        metadata: dict[str, str] | None = None,
        content_type: str = "application/octet-stream",
        only_if_absent: bool = False,
    ) -> bool:
        """Write the object; with ``only_if_absent``, False (and nothing written) if it exists.

        ``If-None-Match: *`` makes a chunk write-once: two hosts racing to upload the same chunk
        cannot replace each other's object (and its codec metadata) under a reader.
        """
        extra: dict[str, object] = {"Metadata": metadata or {}, "ContentType": content_type}
        if only_if_absent:
            extra["IfNoneMatch"] = "*"
        try:
            self._s3.put_object(Bucket=self.url.bucket, Key=key, Body=body, **extra)
        except botocore.exceptions.ClientError as e:
            if only_if_absent and _status(e) in (409, 412):
                return False
            raise self._fail("PUT", key, e) from None
        except botocore.exceptions.BotoCoreError as e:
            raise self._fail("PUT", key, e) from None
        return True

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` (paged, so memory stays bounded), in key order."""
        paginator = self._s3.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.url.bucket, Prefix=prefix):
                for obj in page.get("Contents", ()):
                    yield ObjectInfo(
                        obj["Key"], obj["Size"], obj["LastModified"], {}, obj.get("ETag", "")
                    )
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
            raise self._fail("LIST", prefix, e) from None

    def delete(self, keys: Sequence[str]) -> None:
        """Delete objects (a missing one is not an error)."""
        for start in range(0, len(keys), DELETE_BATCH):
            batch = [{"Key": k} for k in keys[start : start + DELETE_BATCH]]
            try:
                r = self._s3.delete_objects(
                    Bucket=self.url.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
                raise self._fail("DELETE", batch[0]["Key"], e) from None
            errors = r.get("Errors") or []
            if errors:
                first = errors[0]
                raise ReplicaError(
                    f"replica {self.url}: DELETE {first.get('Key')}: {first.get('Message')}"
                )

    def create(self) -> None:
        """Create the bucket (tests, first set-up); an existing bucket of ours is fine."""
        try:
            self._s3.create_bucket(Bucket=self.url.bucket)
        except botocore.exceptions.ClientError as e:
            code = e.response.get("Error", {}).get("Code")
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._fail("CREATE", self.url.bucket, e) from None
        except botocore.exceptions.BotoCoreError as e:
            raise self._fail("CREATE", self.url.bucket, e) from None


def _status(e: botocore.exceptions.ClientError) -> int:
    return int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _describe(e: Exception) -> str:
    if isinstance(e, botocore.exceptions.ClientError):
        err = e.response.get("Error", {})
        return f"{err.get('Code', 'error')} ({err.get('Message', '').strip() or _status(e)})"
    return str(e)
