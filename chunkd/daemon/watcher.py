"""Find client directories and candidate checkpoints: watchdog events plus scans.

Events are fast but not guaranteed (inotify queues overflow, network filesystems send none), so
two mechanisms cover each other: watchdog observers for prompt detection, and scans (at start-up
and on the reconciliation schedule) that enumerate everything. Both only *offer* paths to the
client's lane; the lane's ``sources`` table makes offering the same file twice harmless.

Callbacks run on watchdog's observer thread and must return at once: they filter the name and
call ``offer`` (a non-blocking queue put) or ``on_new_client`` (which only enqueues, too).
"""

from __future__ import annotations

import errno
import fnmatch
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import structlog
from watchdog.events import (
    DirCreatedEvent,
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

#: Modified events for one path closer together than this are one offer (a large write sends
#: thousands; the settle delay decides completion, not the event count).
OFFER_THROTTLE_S = 0.25
_TEMP_SUFFIXES = (".tmp", ".partial", "~", ".part", ".swp")

Offer = Callable[[str, Path], bool]
NewClient = Callable[[str, Path], None]


def is_candidate(name: str, patterns: tuple[str, ...]) -> bool:
    """A checkpoint name: matches ``file_patterns`` and is not a temp or hidden file."""
    if name.startswith(".") or name.endswith(_TEMP_SUFFIXES):
        return False
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def client_id_for(directory_name: str, settings: Settings) -> str | None:
    match = settings.client_dir_pattern.fullmatch(directory_name)
    if match is None:
        return None
    client_id = match.group("client")
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
        patterns: tuple[str, ...],
        offer: Offer,
        on_drop: Callable[[str], None],
    ) -> None:
        self._client_id = client_id
        self._patterns = patterns
        self._offer = offer
        self._on_drop = on_drop
        self._last_offer: dict[str, float] = {}  # observer thread only

    def on_any_event(self, event: FileSystemEvent) -> None:
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
        if not self._offer(self._client_id, Path(path)):
            self._on_drop(self._client_id)


class _RootHandler(FileSystemEventHandler):
    def __init__(self, settings: Settings, on_new_client: NewClient) -> None:
        self._settings = settings
        self._on_new_client = on_new_client

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, DirMovedEvent):
            path = os.fsdecode(event.dest_path)
        elif isinstance(event, DirCreatedEvent):
            path = os.fsdecode(event.src_path)
        else:
            return
        client_id = client_id_for(os.path.basename(path), self._settings)
        if client_id is not None:
            self._on_new_client(client_id, Path(path))


class Watcher:
    """Owns the observers. Methods are called from the service's main thread."""

    def __init__(self, settings: Settings, offer: Offer, on_new_client: NewClient) -> None:
        self._settings = settings
        self._offer = offer
        self._on_new_client = on_new_client
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
            self._schedule(_RootHandler(self._settings, self._on_new_client), root, recursive=False)

    def stop(self) -> None:
        for observer in (self._observer, self._polling):
            if observer is not None:
                observer.stop()
        for observer in (self._observer, self._polling):
            if observer is not None and observer.is_alive():
                observer.join(timeout=5)

    def discover_clients(self) -> list[tuple[str, Path]]:
        """Client directories under ``watch_root`` now (the scan half of client discovery)."""
        root = self._settings.watch_root
        found = []
        try:
            entries = sorted(os.scandir(root), key=lambda e: e.name)
        except OSError:
            return []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                client_id = client_id_for(entry.name, self._settings)
                if client_id is not None:
                    found.append((client_id, Path(entry.path)))
        return found

    def watch_client(self, client_id: str, directory: Path) -> None:
        if directory in self._watched:
            return
        handler = _ClientHandler(
            client_id, self._settings.file_patterns, self._offer, self._note_drop
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
