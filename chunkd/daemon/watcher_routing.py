"""Which client a path belongs to: candidates, client ids, and the one event handler of the daemon.

Client directories may sit at any depth under ``watch_root`` (``outputs/<run>/client_3/``,
Hydra's dated trees). ``client_dir_pattern`` is matched against the directory's path relative to
``watch_root`` (``/``-separated), ending at its last component and starting at any component
boundary (:func:`client_id_for`): ``client_(?P<client>...)`` finds ``client_3/`` at any depth, a
pattern that starts with ``^`` is anchored at ``watch_root``. The search never descends into a
client directory (its subdirectories are its own), nor into dot directories, symlinks, or deeper
than :data:`MAX_CLIENT_DEPTH` levels.

:class:`EventRouter` is the handler of every watch (the recursive one on ``watch_root`` and the
few of ``[[clients]]`` outside it). It runs on watchdog's observer thread and must return at
once: a file event is routed to its client by walking up from the file's directory to the
nearest known client directory (one dict lookup a level, never above ``watch_root`` or the
watched directory), filtered by name and offered (a non-blocking queue put). A *complete* write
(close-after-write, or a rename onto the name) is offered with the file's identity as it is at
that event (one ``stat``), so that the lane can tell a complete version that was overwritten
before it settled (``checkpoint.superseded``, :mod:`chunkd.daemon.settle`).
"""

from __future__ import annotations

import fnmatch
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    EventsLostEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)

from chunkd.config import Settings, check_client_id
from chunkd.errors import ChunkdError
from chunkd.store import FileIdentity

#: Modified events for one path closer together than this are one offer (a large write sends
#: thousands; the settle delay decides completion, not the event count).
OFFER_THROTTLE_S = 0.25
#: Paths whose last offer time is remembered before stale ones are forgotten (memory bound).
_THROTTLE_PATHS = 10_000
_TEMP_SUFFIXES = (".tmp", ".partial", "~", ".part", ".swp")

#: How many directory levels below ``watch_root`` client directories are looked for (Hydra's
#: ``multirun/<date>/<time>/<job>/client_3`` is 5 deep).
MAX_CLIENT_DEPTH = 6
#: Characters a ``run`` group's text may not carry into a client id (see :func:`client_id_for`).
_NOT_ID_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")

#: The events the router acts on. Scheduling with this filter narrows the kernel's inotify mask:
#: without it every open and read-only close (each listing by a scan, each read of a checkpoint by
#: its lane, each open of a database) would queue an event for the observer thread to discard.
EVENT_FILTER: tuple[type[FileSystemEvent], ...] = (
    FileCreatedEvent,
    FileModifiedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileMovedEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    EventsLostEvent,
)

#: ``offer(client_id, path)``, or with the file's identity at a complete write as a third argument
Offer = Callable[..., bool]
NewClient = Callable[[str, Path], None]
#: ``on_gone(path)``: a directory under ``watch_root`` (or a client directory) was deleted or moved
Gone = Callable[[Path], None]
#: ``on_drop(client_id, client_dir)``: an offer did not fit in the client's queue
Drop = Callable[[str, str], None]


def is_candidate(name: str, patterns: tuple[str, ...]) -> bool:
    """A checkpoint name: matches ``file_patterns`` and is not a temp or hidden file."""
    if name.startswith(".") or name.endswith(_TEMP_SUFFIXES):
        return False
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


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


def relative_dir(settings: Settings, path: str) -> str | None:
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


def inside_client(relative: str, settings: Settings) -> bool:
    """Whether a proper ancestor of ``relative`` is a client directory (then it is client data)."""
    parts = relative.split("/")
    return any(
        client_id_for("/".join(parts[:n]), settings) is not None for n in range(1, len(parts))
    )


def _identity(path: str) -> FileIdentity | None:
    """The file as a complete write left it (None if it is already gone again)."""
    try:
        return FileIdentity.of(os.stat(path, follow_symlinks=False))
    except OSError:
        return None


class EventRouter(FileSystemEventHandler):
    """The handler of every watch: file events go to their client, directory events to discovery.

    ``clients`` maps a client directory (as a string, the way watchdog spells event paths) to its
    id. The service's main thread adds to it (:meth:`Watcher.watch_client`); this handler only
    reads it, on the observer thread, one ``get`` at a time (atomic in CPython), so no lock.
    """

    def __init__(
        self,
        settings: Settings,
        clients: Mapping[str, str],
        offer: Offer,
        on_new_client: NewClient,
        on_gone: Gone | None,
        on_drop: Drop,
        on_lost: Callable[[], None],
    ) -> None:
        self._settings = settings
        self._root = os.fspath(settings.watch_root)
        self._explicit = tuple(c.dir for c in settings.clients)
        self._clients = clients
        self._offer = offer
        self._on_new_client = on_new_client
        self._on_gone = on_gone
        self._on_drop = on_drop
        self._on_lost = on_lost
        self._last_offer: dict[str, float] = {}  # observer thread only

    def client_of(self, path: str) -> tuple[str, str] | None:
        """``(client id, client directory)`` of the nearest known client holding ``path``."""
        directory = os.path.dirname(path)
        while True:
            client_id = self._clients.get(directory)
            if client_id is not None:
                return client_id, directory
            parent = os.path.dirname(directory)
            if directory == self._root or parent == directory:
                return None
            directory = parent

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, EventsLostEvent):
            self._on_lost()  # the queue overflowed: the next reconciliation scan lists all
            return
        if isinstance(event, (DirDeletedEvent, DirMovedEvent, DirCreatedEvent)):
            self._directory_event(event)
            return
        if isinstance(event, FileMovedEvent):
            path = os.fsdecode(event.dest_path)
        elif isinstance(
            event, (FileCreatedEvent, FileClosedEvent, FileModifiedEvent, FileAttribEvent)
        ):
            path = os.fsdecode(event.src_path)
        else:
            return
        if not is_candidate(os.path.basename(path), self._settings.file_patterns):
            return
        owner = self.client_of(path)
        if owner is None:
            return  # not inside a client directory (yet: its discovery lists it)
        client_id, client_dir = owner
        now = time.monotonic()
        # A touch (attrib) is offered too: the lane then finds the content unchanged.
        if (
            isinstance(event, (FileModifiedEvent, FileAttribEvent))
            and now - self._last_offer.get(path, 0.0) < OFFER_THROTTLE_S
        ):
            return
        self._remember_offer(path, now)
        if isinstance(event, (FileClosedEvent, FileMovedEvent)):
            offered = self._offer(client_id, Path(path), _identity(path))
        else:
            offered = self._offer(client_id, Path(path))
        if not offered:
            self._on_drop(client_id, client_dir)

    def _remember_offer(self, path: str, now: float) -> None:
        self._last_offer[path] = now
        if len(self._last_offer) > _THROTTLE_PATHS:
            stale = now - OFFER_THROTTLE_S
            self._last_offer = {p: t for p, t in self._last_offer.items() if t >= stale}
            if len(self._last_offer) > _THROTTLE_PATHS:
                self._last_offer.clear()

    def _directory_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, (DirDeletedEvent, DirMovedEvent)) and self._on_gone is not None:
            src = os.fsdecode(event.src_path)
            # A client directory, or one above clients, deleted or moved away: the daemon checks.
            # A directory inside a client's data holds no client (unless one is listed there).
            if self.client_of(src) is None or any(c.is_relative_to(src) for c in self._explicit):
                self._on_gone(Path(src))
        if isinstance(event, DirMovedEvent):
            path = os.fsdecode(event.dest_path)
        elif isinstance(event, DirCreatedEvent):
            path = os.fsdecode(event.src_path)
        else:
            return
        # Recursive because clients may appear at any depth; watchdog's inotify emitter also
        # reports the directories inside a new directory that were created before its watch was
        # added (``mkdir -p outputs/run/client_3``), and the reconciliation scan covers the rest.
        relative = relative_dir(self._settings, path)
        if relative is None or inside_client(relative, self._settings):
            return
        client_id = client_id_for(relative, self._settings)
        if client_id is not None:
            self._on_new_client(client_id, Path(path))
