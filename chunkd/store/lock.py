"""The one-writer lock, held on ``<db>.lock`` and never on the database file itself.

SQLite locks a database with POSIX advisory locks, and closing *any* descriptor of a file drops
every POSIX lock the process holds on it (SQLite's "How To Corrupt An SQLite Database" §2.2). So
chunkd never opens or closes a descriptor on a database inode: the writer's exclusive ``flock``
lives on a separate lock file, writability is checked with ``access(2)``, and identity with
``stat(2)``. ``flock`` locks belong to the open file description, so a second writer in the same
process (two client ids resolving to one database) is refused just like another process.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

from chunkd.errors import BusyError, StoreError

LOCK_SUFFIX = ".lock"


def lock_path(db: Path) -> Path:
    return db.with_name(db.name + LOCK_SUFFIX)


def refuse_symlink(db: Path) -> None:
    """A database path must name the database itself: a planted symlink could make the daemon
    create or open a database anywhere. (Directories above are the configuration's business.)"""
    for path in (db, lock_path(db)):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        except OSError as e:
            raise StoreError(f"cannot inspect {path}: {e.strerror}") from None
        if stat.S_ISLNK(st.st_mode):
            raise StoreError(f"{path} is a symbolic link; chunkd does not follow links here")
        if path == db and not stat.S_ISREG(st.st_mode):
            raise StoreError(f"{path} is not a regular file")


class WriterLock:
    """An exclusive ``flock`` on ``<db>.lock`` for as long as a writer has the database open."""

    def __init__(self, db: Path, fd: int) -> None:
        self.db = db
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, db: Path) -> WriterLock:
        path = lock_path(db)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise StoreError(f"{path} is a symbolic link") from None
            raise StoreError(f"cannot open lock file {path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise BusyError(
                    f"database {db} is held by another writer (a running chunkd daemon, or a "
                    "second client id that resolves to the same database)"
                ) from None
            raise StoreError(f"cannot lock {path}: {e.strerror}") from None
        return cls(db, fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # the lock file's own descriptor: no SQLite lock lives on it
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def file_id(path: Path) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` by path, without opening the file; None if it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def writable_now(db: Path) -> str | None:
    """Why the database cannot be written right now (read-only file, immutable, read-only mount,
    unwritable directory for the journal), or None. ``access(2)``: no descriptor on the inode."""
    for path in (db, db.parent):
        if os.path.exists(path) and not os.access(path, os.W_OK):
            return f"{path} is not writable"
    return None
