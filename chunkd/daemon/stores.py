"""The writer stores open now: opened on demand, at most :data:`MAX_OPEN_STORES`, LRU-closed.

Issue 20: every client's database and lock file stayed open for the daemon's life, two file
descriptors per client whether it wrote or not (10,000 clients: 20,000 descriptors against a
``LimitNOFILE`` the unit has to choose). A lane now asks this cache for its store when it needs
one; the store stays open while the client is busy (settle, then ingest, reuse the open store)
and is closed when :data:`MAX_OPEN_STORES` others were used since.

A store in use (its lane is being run by a writer) is never closed: a lane pins its store from
the first :meth:`StoreCache.acquire` of a slice to :meth:`StoreCache.release` at its end. Since
:data:`MAX_OPEN_STORES` is larger than the number of writers, there is always an unpinned store
to close. Closing happens under the cache's lock, so a lane that is run again right after its
store was evicted cannot open its database while the old descriptor still holds the one-writer
``flock`` (that open would fail as "held by another writer").
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chunkd import log
from chunkd.daemon.outcomes import LaneStats
from chunkd.daemon.state import HeldRounds
from chunkd.errors import BusyError, ChunkdError
from chunkd.store import ChunkStore
from chunkd.store.lock import WriterLock, lock_path, refuse_symlink

#: Writer stores kept open at once. An open writer costs 2 descriptors (the database and its
#: ``.lock``; the rollback journal is open only inside a write transaction: one more per writer
#: committing), and a connection's memory after ``release_memory`` (~100-200 KiB: schema and
#: statement caches). 64 stores = 128 descriptors, an eighth of a 1,024-descriptor budget at
#: 10,000 clients, leaving the rest for request connections and their reader stores. Far more
#: than the writers (which pin at most one each), so a client whose files arrive close together
#: (offer, settle, ingest) finds its store still open. At a moment up to ``WRITERS`` more are
#: open: each writer may be opening one, which evicts another once it is in.
MAX_OPEN_STORES = 64


@dataclass(slots=True)
class _Entry:
    store: ChunkStore
    pinned: bool


class StoreCache:
    """Open writer stores by owner (a lane), least recently used first."""

    def __init__(self, capacity: int = MAX_OPEN_STORES) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._open: OrderedDict[Hashable, _Entry] = OrderedDict()
        #: databases opened so far (a retention pass with nothing changed adds none)
        self.opens = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)

    def peek(self, owner: Hashable) -> ChunkStore | None:
        """The owner's open store, if one is open (not pinned by this)."""
        with self._lock:
            entry = self._open.get(owner)
            return entry.store if entry is not None else None

    def acquire(self, owner: Hashable, opener: Callable[[], ChunkStore]) -> ChunkStore:
        """The owner's store, opened with ``opener`` if it is not open; pinned until
        :meth:`release`. Only the owner's writer calls this, so two opens cannot race."""
        with self._lock:
            entry = self._open.get(owner)
            if entry is not None:
                entry.pinned = True
                self._open.move_to_end(owner)
                return entry.store
        store = opener()  # outside the lock: opening collects orphan chunks, may take a while
        with self._lock:
            self._open[owner] = _Entry(store, pinned=True)
            self.opens += 1
            self._evict_locked()
        return store

    def release(self, owner: Hashable) -> None:
        """The owner's slice is over: its store may be closed from now on."""
        with self._lock:
            entry = self._open.get(owner)
            if entry is not None:
                entry.pinned = False
            self._evict_locked()

    def close(self, owner: Hashable) -> None:
        """Close the owner's store now (its database was deleted, or the daemon stops)."""
        with self._lock:
            entry = self._open.pop(owner, None)
            if entry is not None:
                entry.store.close()

    def close_all(self) -> None:
        with self._lock:
            while self._open:
                _, entry = self._open.popitem(last=False)
                entry.store.close()

    def _evict_locked(self) -> None:
        if len(self._open) <= self._capacity:
            return
        for owner in [o for o, e in self._open.items() if not e.pinned]:
            if len(self._open) <= self._capacity:
                return
            self._open.pop(owner).store.close()


class ClientDatabase:
    """One client's database as its lane sees it: opened through the cache when needed, never
    created again for a removed client, and what it held when it last changed.

    Used only by the writer running the lane (one at a time); :attr:`held` is read by others.
    """

    def __init__(
        self,
        client_id: str,
        directory: Path,
        db_path: Path,
        cache: StoreCache,
        on_change: Callable[[str], None] | None,
    ) -> None:
        self.client_id = client_id
        self.directory = directory
        self.path = db_path
        self._cache = cache
        self._on_change = on_change
        #: what the database held at its last change (replaced whole; read by the main thread)
        self.held = HeldRounds()
        #: ``held`` was read from the database since the daemon started (not just the default)
        self.held_known = False

    def exists(self) -> bool:
        """A database to read: open now, or on disk (a client with no file yet has none)."""
        return self._cache.peek(self) is not None or self.path.exists()

    def orphaned(self) -> bool:
        """The client directory is gone and the database with it: there is nothing to open, and
        opening would create both again."""
        return not self.path.exists() and not self.directory.is_dir()

    def current(self) -> ChunkStore | None:
        """The store if it is open now (never opens one)."""
        return self._cache.peek(self)

    def ensure(self, logger: Any, stats: LaneStats) -> ChunkStore | None:
        """The open writer store (opened, or created, now if need be; pinned for the slice);
        None if it cannot be opened (reported) or the client was removed."""
        store = self._cache.peek(self)
        if store is not None and not store.is_current():
            # the client directory (and the database in it) was deleted or replaced
            logger.warning(
                log.INGEST_FAILED, error="database file vanished; reopening", db=str(self.path)
            )
            self._cache.close(self)
        if self.orphaned():
            return None  # never re-create a removed client's directory (client.removed)
        try:
            return self._cache.acquire(self, self._open)
        except ChunkdError as e:
            stats.last_error = str(e)
            logger.error(log.INGEST_FAILED, error=str(e), error_code=e.code)
            return None

    def release(self) -> None:
        """The slice is over: the store may be closed from now on."""
        self._cache.release(self)

    def directory_gone(self) -> None:
        """Let go of a deleted database (an open handle would keep its disk space)."""
        store = self._cache.peek(self)
        if store is not None and not store.is_current():
            self._cache.close(self)

    def note_held(self, store: ChunkStore | None, *, pruned: bool = False) -> None:
        """Remember the stored rounds (O(versions), narrow columns): a deleted database cannot
        be asked afterwards. A change means retention has work, unless a prune made it. Best
        effort: a failed read keeps the last figures."""
        if store is None or not store.is_current():
            return
        try:
            versions = store.list_versions()
        except ChunkdError:
            return
        held = HeldRounds(
            rounds=tuple(sorted(v.round_num for v in versions if v.current)),
            generations=sum(1 for v in versions if not v.current),
        )
        self.held_known = True
        if held == self.held:
            return
        self.held = held
        if not pruned:
            self.changed()

    def changed(self) -> None:
        """The stored rounds changed (or a prune is not done): retention has work here."""
        if self._on_change is not None:
            self._on_change(self.client_id)

    def _open(self) -> ChunkStore:
        store = ChunkStore.open_writer(self.path)
        self.note_held(store)
        return store


def probe_writer(db_path: Path) -> None:
    """Raise BusyError if another process holds the database's writer lock now.

    Start-up opens no database any more (issue 20), but a second daemon (another socket, the
    same databases) must still be refused before it serves anything. Only a database whose lock
    file exists can be held; nothing is created. Other failures (a read-only filesystem) are
    left for the lane to report when it needs the database. A path that can never be a database
    (a directory, a planted link) raises StoreError at once: a stat, nothing opened.
    """
    refuse_symlink(db_path)
    if not lock_path(db_path).exists():
        return
    try:
        WriterLock.acquire(db_path).release()
    except BusyError:
        raise
    except ChunkdError:
        return
