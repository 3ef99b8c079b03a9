"""When a pending checkpoint is complete, and which complete versions were overwritten untaken.

The bookkeeping half of a lane's completion detection (the lane stats files and ingests; this
module only decides, from the identities it is handed, so it needs no file and no clock):

* an event (or a scan) for a path sets its deadline to ``now + settle_delay``; a later event
  pushes it back. When the deadline passes, the file's identity (size, mtime, ctime) must equal
  what it was at the last look, else the deadline moves again;
* a *complete* write (close-after-write, or a rename onto the name) is remembered with the
  identity the watcher saw at that event. If a later complete write shows another identity, or
  the file settles as another version, before the lane took the remembered one, that version is
  gone: nobody can ingest it any more (issue 17, finding 7: NVFlare rewrites
  ``FL_global_model.pt`` faster than any useful settle delay). :meth:`SettleTable.offer` and
  :meth:`SettleTable.settle` return it as :class:`Superseded`, which the lane logs as
  ``checkpoint.superseded``. Not every version can be caught; none vanishes unlogged.

Only completion events count: a modify event, a scan or a touch says nothing about a complete
version. So a version seen only by a scan (written before the directory's watch existed: a new
client directory's first file) is not known to be complete, nor is anything on the polling
observer, which sends no completion events (there, as on network filesystems, an overwritten
version cannot be told from a slow write).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chunkd.store import FileIdentity


@dataclass(slots=True)
class Pending:
    """A path the lane has not taken yet."""

    deadline: float
    last_stat: FileIdentity | None
    attempts: int = 0
    #: the identity at the last complete write (close-after-write or rename) not yet taken
    completed: FileIdentity | None = None


@dataclass(frozen=True, slots=True)
class Superseded:
    """A complete version of ``path`` that a newer write replaced before the lane took it."""

    path: Path
    lost: FileIdentity
    #: the version that replaced it, as far as it is known (None: still being written)
    by: FileIdentity | None

    def log_fields(self) -> dict[str, object]:
        fields: dict[str, object] = {
            "path": str(self.path),
            "lost_bytes": self.lost.size,
            "lost_mtime_ns": self.lost.mtime_ns,
        }
        if self.by is not None:
            fields["bytes"] = self.by.size
            fields["mtime_ns"] = self.by.mtime_ns
        return fields


def same_version(a: FileIdentity, b: FileIdentity) -> bool:
    """Whether two identities are one version of the content.

    ctime is left out: a chmod (or the rename that publishes a file) moves it without a write.
    """
    return a.size == b.size and a.mtime_ns == b.mtime_ns


class SettleTable:
    """Pending paths, their settle deadlines, retry counts and last complete versions.

    Owned by one lane thread (no lock). ``now`` is the lane's monotonic clock.
    """

    def __init__(self, settle_s: float) -> None:
        self._settle_s = settle_s
        self._pending: dict[Path, Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, path: Path) -> bool:
        return path in self._pending

    def get(self, path: Path) -> Pending | None:
        return self._pending.get(path)

    def add(
        self, path: Path, stat: FileIdentity, now: float, completed: FileIdentity | None
    ) -> None:
        """A path seen for the first time (the caller checked it was not taken already)."""
        self._pending[path] = Pending(now + self._settle_s, stat, completed=completed)

    def offer(
        self, path: Path, stat: FileIdentity | None, now: float, completed: FileIdentity | None
    ) -> Superseded | None:
        """Another event for a pending path: push its deadline back.

        Settled means unchanged since the *last* event, not since the first one (which for a new
        file is usually its creation at size 0). ``completed`` is the identity the watcher saw at
        a complete write (None for other events); a complete write of another version than the
        one remembered means the remembered one was lost.
        """
        pending = self._pending[path]
        pending.deadline = max(pending.deadline, now + self._settle_s)
        pending.last_stat = stat
        if completed is None:
            return None
        lost = pending.completed
        pending.completed = completed
        if lost is not None and not same_version(lost, completed):
            return Superseded(path, lost, completed)
        return None

    def due(self, now: float) -> list[Path]:
        return [p for p, pending in self._pending.items() if pending.deadline <= now]

    def next_deadline(self) -> float | None:
        return min((p.deadline for p in self._pending.values()), default=None)

    def settle(
        self, path: Path, stat: FileIdentity | None, now: float
    ) -> tuple[bool, Superseded | None]:
        """At the deadline: (take it now?, a complete version lost meanwhile).

        A file that is gone is dropped; one that changed since the last look waits another
        settle delay. One that is unchanged is taken, and if it is not the version the last
        complete write showed, that version was overwritten with no completion event seen yet
        (the lane was busy, or the newer write is still open).
        """
        pending = self._pending[path]
        if stat is None:  # gone (renamed away, deleted): nothing to take
            del self._pending[path]
            return False, None
        lost = pending.completed
        superseded = None
        if lost is not None and not same_version(lost, stat):
            superseded = Superseded(path, lost, stat)
            pending.completed = None
        if stat != pending.last_stat:
            pending.last_stat = stat
            pending.deadline = now + self._settle_s
            return False, superseded
        return True, superseded

    def retry(self, path: Path, delay_s: float, stat: FileIdentity | None, now: float) -> int:
        """Try again after ``delay_s``; returns the attempt count."""
        pending = self._pending[path]
        pending.attempts += 1
        pending.deadline = now + delay_s
        pending.last_stat = stat
        return pending.attempts

    def postpone(self, path: Path, delay_s: float, now: float) -> None:
        self._pending[path].deadline = now + delay_s

    def drop(self, path: Path) -> None:
        self._pending.pop(path, None)

    def clear(self) -> None:
        self._pending.clear()
