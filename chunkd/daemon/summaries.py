"""The ``list`` entries of unchanged databases, kept so that ``list`` need not open them again.

Opening a client's database and summarizing it costs a SQLite connection, a schema read and a
handful of queries (~1-3 ms each here); at 10,000 clients that made one ``list`` cost tens of
seconds, for figures that almost never change between two listings. This cache keeps each
client's summary beside a :class:`DbStamp` of the database file taken *before* the summary was
read, and reuses the summary only while the file's stamp is unchanged.

Why the stamp catches every change. chunkd's databases use a rollback journal (``journal_mode=
TRUNCATE``, :mod:`chunkd.store.schema`), so every committed transaction (an ingest, a prune and
its incremental vacuum, a forget, a migration, a hot journal rolled back by a reader) writes its
pages into the database file itself and, by SQLite's file format, increments the *file change
counter* in the header (bytes 24-27), which SQLite itself uses to tell other processes that the
file changed. The stamp is that counter plus the file's device, inode, size, mtime and ctime:

* a commit changes the counter (and mtime, which alone could miss two commits within one tick of
  the filesystem's coarse clock when the size stays the same: the counter does not);
* a database replaced (renamed over, deleted and created again, restored from a backup) is a
  different inode, or at least a different ctime and counter;
* a database deleted has no stamp: its summary is read again (and reports no database);
* a transaction in progress or a hot journal leaves a non-empty ``-journal``, and a database
  someone switched to WAL mode has a ``-wal``: neither is cached (the counter is not kept in WAL
  mode), so such a database is read every time, as before.

The stamp is taken before the read, so a commit that lands during the read leaves a stamp older
than the figures: the next ``list`` sees a different stamp and reads again. Stale in the other
direction (figures older than the stamp) cannot happen.

Bounded: at most one entry per watched client (entries of clients no longer watched are dropped
on every ``list``), each kept as its compact JSON text (~0.8 KiB for a client with two rounds,
about what its part of the ``list`` answer weighs) rather than as Python objects (~4x that).
Thread-safe: request threads share one cache; the lock guards only the dict.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Final

#: SQLite's header: the "file change counter" is the big-endian u32 at offset 24.
_HEADER_BYTES: Final = 100
_CHANGE_COUNTER: Final = slice(24, 28)
_MAGIC: Final = b"SQLite format 3\x00"


@dataclass(frozen=True, slots=True)
class DbStamp:
    """What identifies one committed state of a database file (see the module docstring)."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    change_counter: bytes


def stamp_of(db: Path) -> DbStamp | None:
    """The database's stamp now, or None when its summary must not be cached.

    None: no file (or not a regular file, or a symlink, which the store refuses anyway), no
    SQLite header yet (a first ingest creating it), a non-empty ``-journal`` (a transaction in
    progress, or a hot journal a reader will roll back) or any ``-wal`` file.
    """
    try:
        fd = os.open(db, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size < _HEADER_BYTES:
            return None
        header = os.pread(fd, _HEADER_BYTES, 0)
    except OSError:
        return None
    finally:
        os.close(fd)
    if not header.startswith(_MAGIC) or _sidecars_in_use(db):
        return None
    return DbStamp(
        st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, header[_CHANGE_COUNTER]
    )


def _sidecars_in_use(db: Path) -> bool:
    """A non-empty rollback journal, or a WAL file of any size (or one that cannot be looked at)."""
    for suffix, empty_is_fine in (("-journal", True), ("-wal", False)):
        try:
            size = os.stat(f"{db}{suffix}").st_size
        except FileNotFoundError:
            continue
        except OSError:
            return True
        if size or not empty_is_fine:
            return True
    return False


@dataclass(frozen=True, slots=True)
class _Entry:
    db_path: Path
    stamp: DbStamp
    text: str


@dataclass(slots=True)
class CacheCounts:
    """What the cache did since the daemon started: shown by ``status`` (``summaries``)."""

    #: summaries read from a database (a miss, or a database that may not be cached)
    read: int = 0
    #: summaries served from the cache without opening the database
    reused: int = 0


class SummaryCache:
    """Client id -> the summary of its database at a stamp; see the module docstring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._counts = CacheCounts()

    def get(
        self, client_id: str, db_path: Path, read: Callable[[], dict[str, object]]
    ) -> dict[str, object]:
        """The client's summary: the cached one while the database is unchanged, else ``read()``.

        ``read`` opens the database; whatever it raises propagates and nothing is cached.
        The result is the caller's own (a fresh dict each time).
        """
        stamp = stamp_of(db_path)
        with self._lock:
            entry = self._entries.get(client_id)
            if entry is not None and entry.stamp == stamp and entry.db_path == db_path:
                self._counts.reused += 1
                text = entry.text
            else:
                self._counts.read += 1
                text = None
        if text is not None:
            summary: dict[str, object] = json.loads(text)
            return summary
        try:
            summary = read()
        except BaseException:
            self.forget(client_id)
            raise
        with self._lock:
            if stamp is None:
                self._entries.pop(client_id, None)
            else:
                text = json.dumps(summary, separators=(",", ":"), allow_nan=False)
                self._entries[client_id] = _Entry(db_path, stamp, text)
        return summary

    def forget(self, client_id: str) -> None:
        with self._lock:
            self._entries.pop(client_id, None)

    def retain(self, client_ids: Collection[str]) -> None:
        """Drop the entries of clients not in ``client_ids`` (no longer watched)."""
        with self._lock:
            gone = [cid for cid in self._entries if cid not in client_ids]
            for cid in gone:
                del self._entries[cid]

    def counts(self) -> dict[str, int]:
        """``{"cached": entries, "cached_bytes": their text, "read": ..., "reused": ...}``."""
        with self._lock:
            return {
                "cached": len(self._entries),
                "cached_bytes": sum(len(e.text) for e in self._entries.values()),
                "read": self._counts.read,
                "reused": self._counts.reused,
            }
