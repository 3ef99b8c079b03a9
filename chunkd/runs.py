"""Which *run* a new round version belongs to: pure policy, no I/O (docs/SPEC.md, "Rounds").

Rounds are ordered by run, then round number (:attr:`chunkd.store.RoundInfo.order_key`); that one
order is what ``latest``, local and replica retention, the upload stage and ``lag_rounds`` use.
A run is one pass of a training job through a client directory. A job restarted or rerun into the
same directory starts again at round 1 (or at a resume point), and its rounds must be newer than
the previous run's higher-numbered ones: otherwise retention, keeping "the N highest", removes a
restarted job's rounds as soon as they arrive.

The signal is the file's write time (its mtime) against the rounds already stored:

* a file that **rewrites** a round of the newest run (new content from the same path) starts a new
  run, so the new version is always newer than the one it replaces (a rewrite of an earlier run's
  round follows the rules below, which already put it in the newest run or a newer one);
* a file whose round number is at or below a round of the newest run that was *written before it*
  starts a new run: numbers went back in time, so a job started again. That holds whether or not
  the restarted numbers are still stored (the previous run's highest round always is: retention
  never removes the newest round of the newest run);
* a file written *before* the newest run began is a late file of an earlier run (events lost, a
  backlog found by a scan after the restart's first files): it joins the newest run that had begun
  by then, and never pretends to be newer than what was written after it;
* anything else continues the newest run: a backlog of one run ingested in any order after downtime
  stays one run, because each file is compared only with rounds written before it.

Versions stored before chunkd recorded write times stand in their ingest time. A run is numbered
by the write time (ns) of the file that started it, so runs stay in order across a database's
lifetimes (see :func:`_next_run`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

#: The run of a client's first round when it has no write time (otherwise: that time, in ns).
FIRST_RUN: int = 0


@dataclass(frozen=True, slots=True)
class Written:
    """A stored version as the run rule sees it: its run, round number and write time."""

    run: int
    round_num: int
    mtime_ns: int


class StoredRuns(Protocol):
    """The questions the rule asks of a client's stored versions (current and earlier
    generations). The store answers them with indexed queries, so a commit costs O(log n), not
    O(rounds stored); :class:`WrittenVersions` answers them from a list."""

    def newest_run(self) -> int | None:
        """The highest run stored, None when nothing is."""
        ...

    def written_before(self, run: int, round_at_least: int, mtime_ns: int) -> bool:
        """Whether a version of ``run`` numbered ``round_at_least`` or more was written before
        ``mtime_ns``."""
        ...

    def begun_by(self, run: int, mtime_ns: int) -> bool:
        """Whether ``run`` has a version written at or before ``mtime_ns``."""
        ...

    def run_at(self, mtime_ns: int) -> int:
        """The newest run with a version written at or before ``mtime_ns``; the oldest stored
        run if none has one."""
        ...


def assign_run(
    round_num: int,
    mtime_ns: int | None,
    stored: StoredRuns,
    *,
    replacing: Written | None = None,
) -> int:
    """The run for a new version of ``round_num`` whose file was written at ``mtime_ns``.

    ``replacing`` is the current version of ``round_num`` when this is new content for a stored
    round. ``mtime_ns`` is None when the bytes have no file to date them: the version continues
    the newest run (or starts the next one if it replaces a round of it).
    """
    newest = stored.newest_run()
    if newest is None:
        return mtime_ns if mtime_ns is not None else FIRST_RUN
    if replacing is not None and replacing.run >= newest:
        return _next_run(newest, mtime_ns)
    if mtime_ns is None:
        return newest
    if stored.written_before(newest, round_num, mtime_ns):
        return _next_run(newest, mtime_ns)
    if not stored.begun_by(newest, mtime_ns):
        return stored.run_at(mtime_ns)
    return newest


def _next_run(newest: int, mtime_ns: int | None) -> int:
    """A new run's number: the write time of the file that starts it, and always above the newest
    run. Numbering runs by time (not 0, 1, 2, ...) keeps them comparable across a database's
    lifetimes: a client whose database was deleted starts again with runs newer than every run
    an older copy (a replica's manifests) holds."""
    return max(newest + 1, mtime_ns if mtime_ns is not None else 0)


class WrittenVersions:
    """:class:`StoredRuns` over a list of versions (tests, and reasoning about the rule)."""

    def __init__(self, versions: Iterable[Written]) -> None:
        self._versions = list(versions)

    def newest_run(self) -> int | None:
        return max((v.run for v in self._versions), default=None)

    def written_before(self, run: int, round_at_least: int, mtime_ns: int) -> bool:
        return any(
            v.run == run and v.round_num >= round_at_least and v.mtime_ns < mtime_ns
            for v in self._versions
        )

    def begun_by(self, run: int, mtime_ns: int) -> bool:
        return any(v.run == run and v.mtime_ns <= mtime_ns for v in self._versions)

    def run_at(self, mtime_ns: int) -> int:
        begun = [v.run for v in self._versions if v.mtime_ns <= mtime_ns]
        return max(begun) if begun else min(v.run for v in self._versions)
