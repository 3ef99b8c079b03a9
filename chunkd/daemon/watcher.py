"""Find client directories and candidate checkpoints: watchdog events plus scans.

Events are fast but not guaranteed (inotify queues overflow, network filesystems send none), so
two mechanisms cover each other: watchdog observers for prompt detection, and scans (at start-up
and on the reconciliation schedule). Both only *offer* paths to the client's lane; the lane's
``sources`` table makes offering the same file twice harmless.

**One watch for everything under watch_root.** A single recursive watch on ``watch_root`` (one
inotify instance, one emitter thread) sees every client directory below it; its handler
(:class:`~chunkd.daemon.watcher_routing.EventRouter`) routes each file event to its client by
path. Only ``[[clients]]`` listed outside ``watch_root`` (few) get a watch of their own. Threads
and inotify instances therefore do not grow with the number of clients. Callbacks run on
watchdog's observer thread and only enqueue (``offer``, ``on_new_client``, ``on_gone``). A
directory deleted or moved away under ``watch_root`` (not inside a client's data), or a
``[[clients]]`` directory's own watch reporting its deletion, is passed to ``on_gone``: the
daemon checks which clients lost their directory (``client.removed``).

**Reconciliation costs O(changes)** (DESIGN.md "The reconciliation scan lists only what may have
changed"). :meth:`Watcher.scan_client` lists a client directory only when events may have missed
something there. It skips the listing when all of these hold:

* the directory is under a live *inotify* watch (not polling: a network filesystem sends no
  events, so the polling observer lists every client every pass, as before);
* it was listed after the observers started, and no events were lost since that listing (an
  ``IN_Q_OVERFLOW``, watchdog's ``EventsLostEvent``, logged as ``watcher.overflow``);
* its ``(st_mtime_ns, st_ino)`` is what it was at that listing (a directory replaced, or names
  added or removed while no watch saw them, change it; a file rewritten in place does not, but
  its events reach the lane);
* no offer for it was dropped since (a full lane queue: the listing must pick the file up),
  and nobody asked for it (:meth:`Watcher.relist`);
* the listing is younger than :attr:`Watcher.backstop_s` (``BACKSTOP_PASSES`` reconciliation
  intervals): a full listing of every client at least that often catches what nothing above
  can see (an ``mmap`` write sends no inotify event; a watch the kernel could not add for a new
  subdirectory once ``max_user_watches`` ran out).

In steady state a pass therefore costs one ``stat`` a client and lists nothing; a burst of
events costs what it touched; an overflow costs one full pass.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import structlog
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from chunkd import log
from chunkd.config import Settings
from chunkd.daemon.watcher_routing import (
    EVENT_FILTER,
    MAX_CLIENT_DEPTH,
    OFFER_THROTTLE_S,
    EventRouter,
    Gone,
    NewClient,
    Offer,
    client_id_for,
    is_candidate,
    iter_candidates,
)

try:  # Linux only; elsewhere no observer counts as lossless and every pass lists everything
    from watchdog.observers.inotify import InotifyObserver
except Exception:  # pragma: no cover - not Linux
    InotifyObserver = None  # type: ignore[assignment,misc]

__all__ = [
    "BACKSTOP_PASSES",
    "MAX_CLIENT_DEPTH",
    "OFFER_THROTTLE_S",
    "Listed",
    "Watcher",
    "client_id_for",
    "is_candidate",
    "iter_candidates",
    "listing_due",
]

#: Every client directory is listed at least once every this many reconciliation intervals.
BACKSTOP_PASSES = 12


@dataclass(frozen=True, slots=True)
class Listed:
    """What a client directory looked like when it was last listed."""

    stamp: tuple[int, int]  # (st_mtime_ns, st_ino) of the directory, taken before the listing
    generation: int  # the watcher's lost-events generation at that listing
    at: float  # time.monotonic() of the listing


def listing_due(
    last: Listed | None,
    stamp: tuple[int, int] | None,
    *,
    generation: int,
    now: float,
    lossless: bool,
    backstop_s: float,
) -> bool:
    """Whether a reconciliation pass must list a client directory (the rule in the docstring)."""
    return (
        not lossless
        or last is None
        or stamp is None
        or stamp != last.stamp
        or generation != last.generation
        or now - last.at >= backstop_s
    )


def _stamp(directory: str) -> tuple[int, int] | None:
    try:
        st = os.stat(directory)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_ino


class Watcher:
    """Owns the observers. Methods are called from the service's main thread, except
    :meth:`relist` and the router's callbacks (any thread)."""

    def __init__(
        self,
        settings: Settings,
        offer: Offer,
        on_new_client: NewClient,
        on_gone: Gone | None = None,
    ) -> None:
        self._settings = settings
        self._offer = offer
        self._root = os.fspath(settings.watch_root)
        self._observer = self._make_observer(settings.observer)
        self._polling: BaseObserver | None = None
        #: client directory -> id, for routing; main thread writes, the observer thread reads
        self._clients: dict[str, str] = {}
        #: ``[[clients]]`` outside watch_root with a watch of their own: directory -> its st_ino
        self._own: dict[str, int | None] = {}
        self._lossless: set[str] = set()  # watched paths whose watch is on inotify
        self._listed: dict[str, Listed] = {}  # main thread only
        self._lock = threading.Lock()  # guards the fields below and the lazy polling observer
        self._relist: set[str] = set()
        self._generation = 0  # bumped whenever events may have been lost
        self._started = False
        self._router = EventRouter(
            settings,
            self._clients,
            offer,
            on_new_client,
            on_gone,
            self._note_drop,
            self._events_lost,
        )
        self._log = structlog.get_logger("chunkd.watcher")
        self.dropped_offers = 0
        #: client directories listed / skipped by :meth:`scan_client` (figures for tests, status)
        self.listings = 0
        self.listings_skipped = 0
        #: a client directory listed longer ago than this is listed again, changed or not
        self.backstop_s = (BACKSTOP_PASSES - 0.5) * settings.rescan_interval_s

    @staticmethod
    def _make_observer(kind: str) -> BaseObserver:
        return PollingObserver(timeout=1.0) if kind == "polling" else Observer()

    def start(self) -> None:
        self._observer.start()
        with self._lock:
            # listings made before the observers ran saw nothing that happened after them
            self._generation += 1
            self._started = True
        if os.path.isdir(self._root):
            self._schedule(self._root)

    def stop(self) -> None:
        for observer in (self._observer, self._polling):
            if observer is not None:
                observer.stop()
        for observer in (self._observer, self._polling):
            if observer is not None and observer.is_alive():
                observer.join(timeout=5)

    def discover_clients(self) -> list[tuple[str, Path]]:
        """Client directories under ``watch_root`` now (the scan half of client discovery).

        Breadth-first, in name order, so that the result (and which of two directories claiming
        one id wins) does not depend on the filesystem's listing order. It lists the levels
        above client directories only (``os.scandir``, no ``stat``), never a client's own data.
        """
        settings = self._settings
        explicit = {c.dir for c in settings.clients}
        found: list[tuple[str, Path]] = []
        level: list[tuple[Path, str]] = [(settings.watch_root, "")]
        for _depth in range(MAX_CLIENT_DEPTH):
            below: list[tuple[Path, str]] = []
            for directory, relative in level:
                try:
                    with os.scandir(directory) as it:
                        entries = sorted(it, key=lambda e: e.name)
                except OSError:
                    continue
                for entry in entries:
                    if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                        continue
                    path = Path(entry.path)
                    if path in explicit:
                        continue
                    rel = f"{relative}/{entry.name}" if relative else entry.name
                    client_id = client_id_for(rel, settings)
                    if client_id is not None:
                        found.append((client_id, path))
                    else:
                        below.append((path, rel))
            level = below
        return found

    def watch_client(self, client_id: str, directory: Path) -> None:
        """Route the events of ``directory`` to ``client_id`` (a watch of its own only outside
        ``watch_root``)."""
        key = os.fspath(directory)
        self._clients[key] = client_id
        if not self._under_root(key) and key not in self._own:
            self._own[key] = _ino(key)
            self._schedule(key)

    def unwatch_missing(self) -> None:
        """Forget own watches of directories that were deleted, so that a re-created one is
        watched again (directories under ``watch_root`` need nothing: the root watch sees them
        come back)."""
        for key in list(self._own):
            if not os.path.isdir(key):
                self._unwatch(key)

    def rewatch_client(self, client_id: str, directory: Path) -> None:
        """Watch a directory that may have been deleted and created again.

        Called for every known client on every pass, so it costs nothing unless the directory
        really is another one: under ``watch_root`` the root watch already covers it; outside, its
        own watch is replaced only if the inode changed (the old watch died with the old one).
        """
        key = os.fspath(directory)
        self._clients[key] = client_id
        if key in self._own and self._own[key] != _ino(key):
            self._unwatch(key)
        self.watch_client(client_id, directory)

    def relist(self, directory: Path) -> None:
        """Have the next :meth:`scan_client` of ``directory`` list it (any thread): for a lane
        whose ingest failed on our side (disk full) and that wants the file offered again."""
        with self._lock:
            self._relist.add(os.fspath(directory))

    def scan_client(self, client_id: str, directory: Path) -> int:
        """Offer every candidate in ``directory`` if it may hold something that no event
        offered (the rule in the module docstring); returns how many were offered."""
        key = os.fspath(directory)
        with self._lock:
            asked = key in self._relist
            self._relist.discard(key)
            generation = self._generation
            lossless = self._started and self._is_lossless(key)
        stamp = _stamp(key)  # before the listing: a change during it shows at the next pass
        now = time.monotonic()
        last = self._listed.get(key)
        if not asked and not listing_due(
            last,
            stamp,
            generation=generation,
            now=now,
            lossless=lossless,
            backstop_s=self.backstop_s,
        ):
            self.listings_skipped += 1
            return 0
        self.listings += 1
        count = dropped = 0
        for path in iter_candidates(directory, self._settings.file_patterns):
            if self._offer(client_id, path):
                count += 1
            else:
                dropped += 1
                self._note_drop(client_id, key)
        if stamp is None or not lossless:
            self._listed.pop(key, None)
        elif not dropped:
            self._listed[key] = Listed(stamp, generation, now)
        return count

    # -- internals ------------------------------------------------------------------------------
    def _under_root(self, key: str) -> bool:
        return key == self._root or key.startswith(self._root.rstrip("/") + "/")

    def _is_lossless(self, key: str) -> bool:
        """Whether every event of ``key`` reaches the router (caller holds the lock)."""
        return (self._root if self._under_root(key) else key) in self._lossless

    def _schedule(self, path: str) -> None:
        """Watch ``path`` recursively; a watch the kernel refuses falls back to polling."""
        try:
            self._observer.schedule(
                self._router, path, recursive=True, event_filter=list(EVENT_FILTER)
            )
        except OSError as e:
            extra = {}
            if e.errno in (errno.ENOSPC, errno.EMFILE):
                extra["hint"] = (
                    "inotify watch limit reached: raise fs.inotify.max_user_watches; "
                    "polling this directory meanwhile"
                )
            self._log.error(log.WATCHER_FALLBACK_POLLING, path=path, error=str(e), **extra)
        else:
            if InotifyObserver is not None and isinstance(self._observer, InotifyObserver):
                with self._lock:
                    self._lossless.add(path)
            return
        with self._lock:
            if self._polling is None:
                self._polling = PollingObserver(timeout=1.0)
                self._polling.start()
            self._lossless.discard(path)
        self._polling.schedule(self._router, path, recursive=True, event_filter=list(EVENT_FILTER))

    def _unwatch(self, key: str) -> None:
        self._own.pop(key, None)
        with self._lock:
            self._lossless.discard(key)
        for observer in (self._observer, self._polling):
            if observer is None:
                continue
            for emitter in list(observer.emitters):
                if emitter.watch.path == key:
                    observer.unschedule(emitter.watch)

    def _events_lost(self) -> None:
        """The kernel dropped events (observer thread): every client is listed at the next pass."""
        with self._lock:
            self._generation += 1
        self._log.warning(
            log.WATCHER_OVERFLOW,
            hint="inotify queue overflowed, events were lost; "
            "the next reconciliation scan lists every client directory",
        )

    def _note_drop(self, client_id: str, client_dir: str) -> None:
        with self._lock:
            self._relist.add(client_dir)
            self.dropped_offers += 1
            dropped = self.dropped_offers
        if dropped % 1000 == 1:
            self._log.warning(
                log.WATCHER_OVERFLOW,
                client=client_id,
                dropped=dropped,
                hint="queue full; the reconciliation scan will pick these up",
            )


def _ino(directory: str) -> int | None:
    try:
        return os.stat(directory).st_ino
    except OSError:
        return None
