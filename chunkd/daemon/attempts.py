"""Remember, durably, which file a lane was ingesting, so a file that kills the daemon is set aside.

A checkpoint that crashes the process (the kernel's OOM killer, a bug in a C library, systemd's
watchdog) would otherwise be offered again by the start-up scan after every restart, forever.
So before a lane streams a file it writes the file's identity and an attempt count to a small
state file beside the client's database, and fsyncs it; when the ingest ends in any way the
process survives, the file is removed. Finding it at the next attempt of the *same version* of
the same file means that many earlier attempts died with the daemon: after
:data:`MAX_ATTEMPTS` the file is rejected (``checkpoint.rejected``, reason ``crashed_daemon``)
and recorded as such, so it is not offered again until it changes.

One file per lane (a lane ingests one file at a time), written only by the lane's thread.

Also here, the other end of a lane's attempt: :func:`delete_verified` (``delete_after_ingest``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from structlog.typing import FilteringBoundLogger as BoundLogger

from chunkd import log
from chunkd.errors import CheckpointError, ChunkdError
from chunkd.ingest import IngestResult
from chunkd.restore import restore_round
from chunkd.safepath import BeneathFile
from chunkd.store import ChunkStore, FileIdentity

#: Attempts that may end with the daemon's death before the file is set aside.
MAX_ATTEMPTS: Final = 3


@dataclass(frozen=True, slots=True)
class Attempt:
    path: str
    size: int
    mtime_ns: int
    ctime_ns: int
    count: int

    def same_file(self, path: str, identity: FileIdentity) -> bool:
        return (self.path, self.size, self.mtime_ns, self.ctime_ns) == (
            path,
            identity.size,
            identity.mtime_ns,
            identity.ctime_ns,
        )


class AttemptLog:
    """The state file ``<database>.attempt`` of one lane."""

    def __init__(self, db_path: Path) -> None:
        self.path = db_path.with_name(db_path.name + ".attempt")

    def previous(self, path: str, identity: FileIdentity) -> int:
        """How many earlier attempts at this version of ``path`` died with the daemon."""
        try:
            # O_NOFOLLOW: with databases in the client directories (the seed's layout) a tenant
            # could plant a link here; it must not make the daemon read another file.
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                raw = json.loads(os.read(fd, 1 << 16))
            finally:
                os.close(fd)
            attempt = Attempt(**raw)
        except (OSError, ValueError, TypeError):
            return 0
        return attempt.count if attempt.same_file(path, identity) else 0

    def begin(self, path: str, identity: FileIdentity, count: int) -> None:
        """Durably record attempt number ``count`` (written, fsynced, renamed, dir fsynced)."""
        attempt = Attempt(path, identity.size, identity.mtime_ns, identity.ctime_ns, count)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # a stale one, or a planted link: unlink never follows it
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600)
        try:
            os.write(fd, json.dumps(asdict(attempt)).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)

    def end(self) -> None:
        """The attempt ended and the daemon lives: forget it."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CrashedDaemonError(CheckpointError):
    """Ingesting this version of the file ended with the daemon's death too often."""

    retryable = False


def delete_verified(
    store: ChunkStore, beneath: BeneathFile, result: IngestResult, logger: BoundLogger
) -> None:
    """Remove the client's file only once its round restores byte-identical to it, and
    only while its name in the client's directory is still the file that was read.

    A job that rewrites its file in place (``open(path, "wb")``, as NVFlare's global model is
    written) keeps the inode, so "still the same file" also means unchanged since the content was
    hashed: the identity (size, mtime, ctime) is taken before the hash and compared again just
    before the unlink. What a rewrite in the microseconds between that check and the unlink
    writes is the one window left; a job that writes a temporary name and renames it never
    meets it (the name then refers to another inode)."""
    if result.round_num is None:
        return
    path = beneath.path
    digest = hashlib.sha256()
    try:
        identity = FileIdentity.of(os.fstat(beneath.fd))
        restored = restore_round(store, result.round_num, digest.update)
        on_disk = _fd_sha256(beneath.fd)
        unchanged = FileIdentity.of(os.fstat(beneath.fd)) == identity
    except (ChunkdError, OSError) as e:
        logger.error(log.INGEST_FAILED, path=str(path), error=f"not deleted: {e}")
        return
    if restored.file_sha256 != result.file_sha256 or on_disk != result.file_sha256 or not unchanged:
        logger.warning(
            log.INGEST_FAILED,
            path=str(path),
            error="not deleted: the file changed since it was ingested",
        )
        return
    try:
        removed = FileIdentity.of(os.fstat(beneath.fd)) == identity and beneath.unlink_if_same()
    except OSError as e:
        logger.error(log.INGEST_FAILED, path=str(path), error=f"not deleted: {e}")
        return
    if not removed:
        logger.warning(
            log.INGEST_FAILED,
            path=str(path),
            error="not deleted: the name no longer refers to the file that was ingested",
        )
        return
    logger.info(log.CHECKPOINT_DELETED, path=str(path), round=result.round_num)


def _fd_sha256(fd: int) -> str:
    digest = hashlib.sha256()
    offset = 0
    while block := os.pread(fd, 8 << 20, offset):
        digest.update(block)
        offset += len(block)
    return digest.hexdigest()
