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
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from chunkd.store import FileIdentity

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
            raw = json.loads(self.path.read_text())
            attempt = Attempt(**raw)
        except (OSError, ValueError, TypeError):
            return 0
        return attempt.count if attempt.same_file(path, identity) else 0

    def begin(self, path: str, identity: FileIdentity, count: int) -> None:
        """Durably record attempt number ``count`` (written, fsynced, renamed, dir fsynced)."""
        attempt = Attempt(path, identity.size, identity.mtime_ns, identity.ctime_ns, count)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
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
