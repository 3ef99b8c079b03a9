"""Find client directories and candidate checkpoints: watchdog events plus scans.

Events are fast but not guaranteed (inotify queues overflow, network filesystems send none), so
two mechanisms cover each other: watchdog observers for prompt detection, and scans (at start-up
and on the reconciliation schedule) that enumerate everything. Both only *offer* paths to the
client's lane; the lane's ``sources`` table makes offering the same file twice harmless.

Callbacks run on watchdog's observer thread and must return at once: they filter the name and
call ``offer`` (a non-blocking queue put) or ``on_new_client`` / ``on_gone`` (which only
enqueue, too). A *complete* write (close-after-write, or a rename onto the name) is offered with
the file's identity as it is at that event (one ``stat``), so that the lane can tell a complete
version that was overwritten before it settled (``checkpoint.superseded``,
:mod:`chunkd.daemon.settle`) even when it reads the offer late. A directory deleted or moved away
under ``watch_root``, or a client directory's own watch reporting its deletion, is passed to
``on_gone``: the daemon checks which clients lost their directory (``client.removed``).

Client directories may sit at any depth under ``watch_root`` (``outputs/<run>/client_3/``,
Hydra's dated trees). ``client_dir_pattern`` is matched against the directory's path relative to
``watch_root`` (``/``-separated), ending at its last component and starting at any component
boundary (:func:`client_id_for`): ``client_(?P<client>...)`` finds ``client_3/`` at any depth, a
pattern that starts with ``^`` is anchored at ``watch_root``. The search never descends into a
client directory (its subdirectories are its own), nor into dot directories, symlinks, or deeper
than :data:`MAX_CLIENT_DEPTH` levels.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import structlog
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from chunkd import log
from chunkd.config import Settings, check_client_id
from chunkd.errors import ChunkdError
from chunkd.store import FileIdentity

#: Modified events for one path closer together than this are one offer (a large write sends
#: thousands; the settle delay decides completion, not the event count).
OFFER_THROTTLE_S = 0.25
_TEMP_SUFFIXES = (".tmp", ".partial", "~", ".part", ".swp")

#: ``offer(client_id, path)``, or with the file's identity at a complete write as a third argument
Offer = Callable[..., bool]
NewClient = Callable[[str, Path], None]
#: ``on_gone(path)``: a directory under ``watch_root`` (or a client directory) was deleted or moved
Gone = Callable[[Path], None]


def is_candidate(name: str, patterns: tuple[str, ...]) -> bool:
    """A checkpoint name: matches ``file_patterns`` and is not a temp or hidden file."""
    if name.startswith(".") or name.endswith(_TEMP_SUFFIXES):
        return False
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


#: How many directory levels below ``watch_root`` client directories are looked for (Hydra's
#: ``multirun/<date>/<time>/<job>/client_3`` is 5 deep).
MAX_CLIENT_DEPTH = 6
#: Characters a ``run`` group's text may not carry into a client id (see :func:`client_id_for`).
_NOT_ID_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


def client_id_for(relative: str, settings: Settings) -> str | None:
    r"""The client id of the directory at ``relative`` (to ``watch_root``), or None.

    ``client_dir_pattern`` must fully match a tail of ``relative`` that starts at a component
    boundary; the longest such tail is tried first, so a ``run`` group sees as much of the path as
    the pattern allows. The id is derived from the match:

    * the ``client`` group's text (``client_3`` -> ``3``);
    * if that group did not take part (an alternative such as ``|global`` matched), the
      directory's own name (``global``), so one line watches Flower's ``global/`` too;
    * with a ``run`` group that matched, ``<run>_<id>`` where each run of characters that an id
      cannot hold (``/``, ``:``, spaces) becomes ``-``: ``outputs/2024-06-01/12-00-00/client_3``
      with ``outputs/(?P<run>[^/]+/[^/]+)/client_(?P<client>\d+)`` is client
      ``2024-06-01-12-00-00_3``, so runs of the same client never share an id.

    A directory whose id would not be a valid client id (too long, ``..``) is not a client.
    """
    pattern = settings.client_dir_pattern
    starts = [0] + [i + 1 for i, ch in enumerate(relative) if ch == "/"]
    for start in starts:
        match = pattern.fullmatch(relative, start)
        if match is not None:
            break
    else:
        return None
    groups = match.groupdict()
    client_id = groups.get("client") or relative.rpartition("/")[2]
    run = groups.get("run")
    if run:
        client_id = f"{_NOT_ID_CHARS.sub('-', run).strip('-')}_{client_id}"
    try:
        check_client_id(client_id)
    except ChunkdError:
        return None
    return client_id


def iter_candidates(directory: Path, patterns: tuple[str, ...]) -> Iterator[Path]:
    """Every candidate checkpoint under ``directory`` (recursively, not following links)."""
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if is_candidate(name, patterns):
                path = Path(root, name)
                if not path.is_symlink():
                    yield path


class _ClientHandler(FileSystemEventHandler):
    def __init__(
        self,
        client_id: str,
        directory: Path,
        patterns: tuple[str, ...],
        offer: Offer,
        on_drop: Callable[[str], None],
        on_gone: Gone | None = None,
    ) -> None:
        self._client_id = client_id
        self._directory = directory
        self._patterns = patterns
        self._offer = offer
        self._on_drop = on_drop
        self._on_gone = on_gone
        self._last_offer: dict[str, float] = {}  # observer thread only

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, (DirDeletedEvent, DirMovedEvent)):
            # the watch on the client directory itself reports the directory's own end
            if self._on_gone is not None and Path(os.fsdecode(event.src_path)) == self._directory:
                self._on_gone(self._directory)
            return
        if isinstance(event, FileMovedEvent):
            path = os.fsdecode(event.dest_path)
        elif isinstance(
            event, (FileCreatedEvent, FileClosedEvent, FileModifiedEvent, FileAttribEvent)
        ):
            path = os.fsdecode(event.src_path)
        else:
            return
        if not is_candidate(os.path.basename(path), self._patterns):
            return
        now = time.monotonic()
        # A touch (attrib) is offered too: the lane then finds the content unchanged.
        if (
            isinstance(event, (FileModifiedEvent, FileAttribEvent))
            and now - self._last_offer.get(path, 0.0) < OFFER_THROTTLE_S
        ):
            return
        self._last_offer[path] = now
        if len(self._last_offer) > 10_000:
            self._last_offer.clear()
        if isinstance(event, (FileClosedEvent, FileMovedEvent)):
            offered = self._offer(self._client_id, Path(path), _identity(path))
        else:
            offered = self._offer(self._client_id, Path(path))
        if not offered:
            self._on_drop(self._client_id)


def _identity(path: str) -> FileIdentity | None:
    """The file as a complete write left it (None if it is already gone again)."""
    try:
        return FileIdentity.of(os.stat(path, follow_symlinks=False))
    except OSError:
        return None


class _RootHandler(FileSystemEventHandler):
    """Watches ``watch_root`` recursively for new directories that are clients.

    Recursive because clients may appear at any depth; watchdog's inotify emitter also reports the
    directories inside a new directory that were created before its watch was added (``mkdir
    -p outputs/run/client_3``), and the reconciliation scan covers anything else.
    """

    def __init__(
        self, settings: Settings, on_new_client: NewClient, on_gone: Gone | None = None
    ) -> None:
        self._settings = settings
        self._on_new_client = on_new_client
        self._on_gone = on_gone

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, (DirDeletedEvent, DirMovedEvent)) and self._on_gone is not None:
            # a client directory, or one above clients, deleted or moved away: the daemon checks
            self._on_gone(Path(os.fsdecode(event.src_path)))
        if isinstance(event, DirMovedEvent):
            path = os.fsdecode(event.dest_path)
        elif isinstance(event, DirCreatedEvent):
            path = os.fsdecode(event.src_path)
        else:
            return
        relative = _relative_dir(self._settings, path)
        if relative is None or _inside_client(relative, self._settings):
            return
        client_id = client_id_for(relative, self._settings)
        if client_id is not None:
            self._on_new_client(client_id, Path(path))


def _relative_dir(settings: Settings, path: str) -> str | None:
    """``path`` relative to ``watch_root`` if it may be a client directory there, else None."""
    try:
        relative = Path(path).relative_to(settings.watch_root).as_posix()
    except ValueError:
        return None
    parts = relative.split("/")
    if relative == "." or len(parts) > MAX_CLIENT_DEPTH or any(p.startswith(".") for p in parts):
        return None
    if any(Path(path) == c.dir for c in settings.clients):
        return None  # listed with [[clients]]: already a client under its configured id
    return relative


def _inside_client(relative: str, settings: Settings) -> bool:
    """Whether a proper ancestor of ``relative`` is a client directory (then it is client data)."""
    parts = relative.split("/")
    return any(
        client_id_for("/".join(parts[:n]), settings) is not None for n in range(1, len(parts))
    )


class Watcher:
    """Owns the observers. Methods are called from the service's main thread."""

    def __init__(
        self,
        settings: Settings,
        offer: Offer,
        on_new_client: NewClient,
        on_gone: Gone | None = None,
    ) -> None:
        self._settings = settings
        self._offer = offer
        self._on_new_client = on_new_client
        self._on_gone = on_gone
        self._observer = self._make_observer(settings.observer)
        self._polling: BaseObserver | None = None
        self._watched: set[Path] = set()
        self._lock = threading.Lock()  # guards the lazily created polling observer
        self._log = structlog.get_logger("chunkd.watcher")
        self.dropped_offers = 0

    @staticmethod
    def _make_observer(kind: str) -> BaseObserver:
        return PollingObserver(timeout=1.0) if kind == "polling" else Observer()

    def start(self) -> None:
        root = self._settings.watch_root
        self._observer.start()
        if root.is_dir():
            handler = _RootHandler(self._settings, self._on_new_client, self._on_gone)
            self._schedule(handler, root, recursive=True)

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
        one id wins) does not depend on the filesystem's listing order.
        """
        settings = self._settings
        explicit = {c.dir for c in settings.clients}
        found: list[tuple[str, Path]] = []
        level: list[tuple[Path, str]] = [(settings.watch_root, "")]
        for _depth in range(MAX_CLIENT_DEPTH):
            below: list[tuple[Path, str]] = []
            for directory, relative in level:
                try:
                    entries = sorted(os.scandir(directory), key=lambda e: e.name)
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
        if directory in self._watched:
            return
        handler = _ClientHandler(
            client_id,
            directory,
            self._settings.file_patterns,
            self._offer,
            self._note_drop,
            self._on_gone,
        )
        self._schedule(handler, directory, recursive=True)
        self._watched.add(directory)

    def unwatch_missing(self) -> None:
        """Forget directories that were deleted, so that a re-created one is watched again."""
        for directory in list(self._watched):
            if not directory.is_dir():
                self._unwatch(directory)

    def rewatch_client(self, client_id: str, directory: Path) -> None:
        """Watch a directory that was deleted and created again (its old watch died with it)."""
        self._unwatch(directory)
        self.watch_client(client_id, directory)

    def _unwatch(self, directory: Path) -> None:
        self._watched.discard(directory)
        for observer in (self._observer, self._polling):
            if observer is None:
                continue
            for watch in list(observer.emitters):
                if Path(watch.watch.path) == directory:
                    observer.unschedule(watch.watch)

    def scan_client(self, client_id: str, directory: Path) -> int:
        """Offer every candidate in ``directory``; returns how many were offered."""
        count = 0
        for path in iter_candidates(directory, self._settings.file_patterns):
            if self._offer(client_id, path):
                count += 1
            else:
                self._note_drop(client_id)
        return count

    def _schedule(self, handler: FileSystemEventHandler, path: Path, *, recursive: bool) -> None:
        try:
            self._observer.schedule(handler, str(path), recursive=recursive)
            return
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EMFILE):
                self._log.error(log.WATCHER_FALLBACK_POLLING, path=str(path), error=str(e))
            else:
                self._log.error(
                    log.WATCHER_FALLBACK_POLLING,
                    path=str(path),
                    error=str(e),
                    hint="inotify watch limit reached: raise fs.inotify.max_user_watches; "
                    "polling this directory meanwhile",
                )
        with self._lock:
            if self._polling is None:
                self._polling = PollingObserver(timeout=1.0)
                self._polling.start()
        self._polling.schedule(handler, str(path), recursive=recursive)

    def _note_drop(self, client_id: str) -> None:
        self.dropped_offers += 1
        if self.dropped_offers % 1000 == 1:
            self._log.warning(
                log.WATCHER_OVERFLOW,
                client=client_id,
                dropped=self.dropped_offers,
                hint="queue full; the reconciliation scan will pick these up",
            )
