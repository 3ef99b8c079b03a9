"""The Watcher on its own, with real inotify: one watch for all clients, O(changes) reconciliation.

No daemon: the Watcher is driven the way the service drives it (``watch_client`` and
``scan_client`` per client, ``discover_clients`` + ``rewatch_client`` on every pass), with an
``offer`` that records what it is given.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chunkd.config import settings_from_mapping
from chunkd.daemon.watcher import Watcher
from tests.daemon.checkpoints import save_model


class Offers:
    """Records offers (any thread); ``accept`` False plays a full lane queue."""

    def __init__(self) -> None:
        self.items: list[tuple[str, Path]] = []
        self.accept = True
        self._cond = threading.Condition()

    def __call__(self, client_id: str, path: Path, completed: object = None) -> bool:
        with self._cond:
            self.items.append((client_id, path))
            self._cond.notify_all()
        return self.accept

    def wait_for(self, client_id: str, path: Path, timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while (client_id, path) not in self.items:
                left = deadline - time.monotonic()
                assert left > 0, f"{path} never offered to {client_id}; offers: {self.items[-5:]}"
                self._cond.wait(left)

    def clear(self) -> None:
        with self._cond:
            self.items.clear()


def make_watcher(tmp_path: Path, offers: Offers, **config: object) -> Watcher:
    settings = settings_from_mapping(
        {
            "watch_root": str(tmp_path / "fl"),
            "socket": str(tmp_path / "s.sock"),
            "rescan_interval": "1s",
            **config,
        },
        source="test",
    )
    settings.watch_root.mkdir(parents=True, exist_ok=True)
    return Watcher(settings, offers, lambda client_id, directory: None)


@pytest.fixture
def watchers() -> Iterator[list[Watcher]]:
    started: list[Watcher] = []
    yield started
    for watcher in started:
        watcher.stop()


def start_with_clients(watcher: Watcher) -> list[tuple[str, Path]]:
    """What the service does at start-up: every discovered client watched and scanned, the
    observers started, then the first reconciliation pass."""
    clients = watcher.discover_clients()
    for client_id, directory in clients:
        watcher.watch_client(client_id, directory)
        watcher.scan_client(client_id, directory)
    watcher.start()
    reconcile(watcher)
    return clients


def reconcile(watcher: Watcher) -> int:
    """One reconciliation pass as ``service.scan_all`` makes it; returns the files offered."""
    watcher.unwatch_missing()
    found = watcher.discover_clients()
    offered = 0
    for client_id, directory in found:  # add_client of a known client
        watcher.rewatch_client(client_id, directory)
        offered += watcher.scan_client(client_id, directory)
    return offered + sum(watcher.scan_client(client_id, d) for client_id, d in found)


def client_dirs(root: Path, count: int) -> list[Path]:
    """Flat ``client_N`` directories and, every fourth one, a Hydra-style deep one."""
    dirs = []
    for i in range(count):
        if i % 4 == 3:
            dirs.append(root / "multirun" / "2024-06-01" / f"12-00-{i:02d}" / "0" / f"client_{i}")
        else:
            dirs.append(root / f"client_{i}")
    for d in dirs:
        d.mkdir(parents=True)
    return dirs


def watchdog_threads() -> int:
    return sum(1 for t in threading.enumerate() if type(t).__module__.startswith("watchdog"))


def inotify_instances() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify"
        except OSError:
            continue
    return count


def test_one_watch_for_every_client_under_watch_root(tmp_path, watchers):
    """200 client directories: one inotify instance, a bounded number of watchdog threads, and a
    file written into any of them (at depth too) offered to its own client."""
    offers = Offers()
    watcher = make_watcher(tmp_path, offers)
    watchers.append(watcher)
    dirs = client_dirs(watcher._settings.watch_root, 200)
    threads_before, inotify_before = watchdog_threads(), inotify_instances()
    clients = start_with_clients(watcher)
    assert len(clients) == 200
    assert inotify_instances() - inotify_before == 1
    # the observer, its inotify reader and one emitter: not one emitter per client
    assert watchdog_threads() - threads_before <= 4
    for i, directory in enumerate(dirs):
        sub = directory / "ckpt" / "round_1" if i % 10 == 0 else directory
        save_model(sub / "model_round_1.pt", seed=i, elements=16)
    expected = dict(clients)
    by_dir = {v: k for k, v in expected.items()}
    for i, directory in enumerate(dirs):
        sub = directory / "ckpt" / "round_1" if i % 10 == 0 else directory
        offers.wait_for(by_dir[directory], sub / "model_round_1.pt")
    # nothing offered to the wrong client
    for client_id, path in offers.items:
        assert path.is_relative_to(expected[client_id]), (client_id, path)


class ScandirCount:
    """Counts ``os.scandir`` calls (``os.walk`` makes them too) at or below client directories."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, dirs: list[Path]) -> None:
        self.dirs = [os.fspath(d) for d in dirs]
        self.count = 0
        real = os.scandir

        def scandir(path: object = ".") -> object:
            text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else ""
            inside = isinstance(text, str) and any(
                text == d or text.startswith(d + "/") for d in self.dirs
            )
            self.count += inside
            return real(path)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "scandir", scandir)


def test_a_reconciliation_pass_with_nothing_changed_lists_no_client_directory(
    tmp_path, watchers, monkeypatch
):
    offers = Offers()
    watcher = make_watcher(tmp_path, offers)
    watchers.append(watcher)
    dirs = client_dirs(watcher._settings.watch_root, 40)
    for i, directory in enumerate(dirs):
        save_model(directory / "model_round_1.pt", seed=i, elements=16)
    scandirs = ScandirCount(monkeypatch, dirs)
    start_with_clients(watcher)
    assert len({path for _, path in offers.items}) == 40  # every file found at start-up
    assert scandirs.count >= 40
    scandirs.count = 0
    offers.clear()
    for _ in range(3):
        assert reconcile(watcher) == 0
    assert scandirs.count == 0, "a pass with nothing changed listed client directories"
    assert offers.items == []
    # a new file: its event offers it, and the next pass lists that one directory only
    save_model(dirs[5] / "model_round_2.pt", seed=99, elements=16)
    offers.wait_for("5", dirs[5] / "model_round_2.pt")
    reconcile(watcher)
    assert scandirs.count == 1
    assert getattr(watcher, "listings", None) is not None  # the figure tests and benchmarks read


def test_a_file_written_while_events_are_lost_is_found_by_the_backstop(tmp_path, watchers):
    """The watch is gone (here: stopped) and nothing tells the watcher; a checkpoint rewritten in
    place changes neither its directory's mtime nor its inode. The backstop's full listing finds
    it; the passes before it do not list."""
    offers = Offers()
    watcher = make_watcher(tmp_path, offers)
    watchers.append(watcher)
    (directory,) = client_dirs(watcher._settings.watch_root, 1)
    path = directory / "model_round_1.pt"
    save_model(path, seed=1, elements=16)
    start_with_clients(watcher)
    watcher.backstop_s = 1.5
    watcher.stop()  # from here on, no event reaches the watcher
    stamp = os.stat(directory).st_mtime_ns
    with open(path, "r+b") as f:  # in place: the directory does not change
        f.write(b"\0")
    assert os.stat(directory).st_mtime_ns == stamp
    offers.clear()
    assert reconcile(watcher) == 0 and offers.items == []
    time.sleep(1.6)
    assert reconcile(watcher) == 1
    assert offers.items == [("0", path)]


def test_a_dropped_offer_is_listed_at_the_next_pass(tmp_path, watchers):
    offers = Offers()
    watcher = make_watcher(tmp_path, offers)
    watchers.append(watcher)
    (directory,) = client_dirs(watcher._settings.watch_root, 1)
    start_with_clients(watcher)
    offers.accept = False  # the lane's queue is full
    path = directory / "model_round_1.pt"
    with open(path, "r+b" if path.exists() else "wb") as f:
        f.write(b"x")
    offers.wait_for("0", path)
    time.sleep(0.5)  # the write's later events (modified, closed) are dropped too
    offers.accept = True
    offers.clear()
    assert reconcile(watcher) == 1
    assert offers.items == [("0", path)]
    assert watcher.dropped_offers >= 1


def test_the_polling_observer_lists_every_pass(tmp_path, watchers):
    """No events on a network filesystem: every pass lists every client, files are offered."""
    offers = Offers()
    watcher = make_watcher(tmp_path, offers, observer="polling")
    watchers.append(watcher)
    dirs = client_dirs(watcher._settings.watch_root, 4)
    start_with_clients(watcher)
    listed = watcher.listings
    reconcile(watcher)
    assert watcher.listings >= listed + 4
    save_model(dirs[3] / "sub" / "model_round_1.pt", seed=3, elements=16)
    offers.wait_for("3", dirs[3] / "sub" / "model_round_1.pt")


def test_a_client_listed_outside_watch_root_keeps_a_watch_of_its_own(tmp_path, watchers):
    offers = Offers()
    outside = tmp_path / "site7"
    outside.mkdir()
    watcher = make_watcher(tmp_path, offers, clients=[{"id": "7", "dir": str(outside)}])
    watchers.append(watcher)
    client_dirs(watcher._settings.watch_root, 3)
    threads_before = watchdog_threads()
    watcher.watch_client("7", outside)
    watcher.scan_client("7", outside)
    start_with_clients(watcher)
    assert watchdog_threads() - threads_before <= 5  # root emitter + its own emitter
    save_model(outside / "model_round_1.pt", seed=7, elements=16)
    offers.wait_for("7", outside / "model_round_1.pt")
    listed = watcher.listings
    reconcile(watcher)
    watcher.scan_client("7", outside)
    assert watcher.listings == listed + 1  # its new file changed the directory: listed once
    watcher.scan_client("7", outside)
    assert watcher.listings == listed + 1


@pytest.mark.parametrize(
    ("change", "due"),
    [
        ({}, False),
        ({"lossless": False}, True),
        ({"last": None}, True),
        ({"stamp": None}, True),
        ({"stamp": (5, 2)}, True),  # directory modified
        ({"stamp": (1, 3)}, True),  # another directory (inode)
        ({"generation": 8}, True),  # events lost since the listing
        ({"now": 100.0 + 60.0}, True),  # backstop
    ],
)
def test_listing_due_rule(change, due):
    from chunkd.daemon.watcher import Listed, listing_due

    args: dict[str, object] = {
        "last": Listed((1, 2), 7, 100.0),
        "stamp": (1, 2),
        "generation": 7,
        "now": 101.0,
        "lossless": True,
        "backstop_s": 60.0,
    }
    args.update(change)
    last, stamp = args.pop("last"), args.pop("stamp")
    assert listing_due(last, stamp, **args) is due  # type: ignore[arg-type]


def test_the_watch_asks_the_kernel_for_no_open_or_read_events(tmp_path, watchers):
    """Each listing by a scan, each read of a checkpoint and each open of a database would
    otherwise queue IN_OPEN / IN_CLOSE_NOWRITE / IN_ACCESS events for the observer thread (and
    fill the kernel's queue towards an overflow) only to be discarded."""
    offers = Offers()
    watcher = make_watcher(tmp_path, offers)
    watchers.append(watcher)
    client_dirs(watcher._settings.watch_root, 8)
    start_with_clients(watcher)
    masks = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                continue
            info = Path(f"/proc/self/fdinfo/{fd}").read_text()
        except OSError:
            continue
        masks += [int(f.split(":")[1], 16) for f in info.split() if f.startswith("mask:")]
    assert len(masks) >= 9  # watch_root and the client directories
    in_access, in_close_nowrite, in_open = 0x1, 0x10, 0x20
    assert all(m & (in_access | in_close_nowrite | in_open) == 0 for m in masks), [
        hex(m) for m in masks
    ]
