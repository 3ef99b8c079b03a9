"""The run rule's questions (:class:`chunkd.runs.StoredRuns`) as indexed queries.

Asked inside the commit transaction, over ``rounds`` and ``round_history`` together. Each is a
range scan of ``(run, round_num)`` (format 3's indexes), so a commit's cost does not grow with
the rounds a keep-all client has stored; only :meth:`SqlRuns.run_at` (a late file of an earlier
run, rare) scans.
"""

from __future__ import annotations

import sqlite3

#: A version's write time: its file's mtime, or (format 2 rows, which did not record it) the
#: time it was ingested.
WRITTEN_AT = "COALESCE(file_mtime_ns, CAST(strftime('%s', created_at) AS INTEGER) * 1000000000)"

_BOTH = ("rounds", "round_history")


class SqlRuns:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def _one(self, sql: str, params: tuple[object, ...]) -> object:
        return self._conn.execute(sql, params).fetchone()[0]

    def newest_run(self) -> int | None:
        found = [self._one(f"SELECT MAX(run) FROM {t}", ()) for t in _BOTH]  # noqa: S608
        runs = [int(r) for r in found if r is not None]  # type: ignore[call-overload]
        return max(runs, default=None)

    def written_before(self, run: int, round_at_least: int, mtime_ns: int) -> bool:
        return any(
            self._one(
                f"SELECT EXISTS (SELECT 1 FROM {t} WHERE run = ? AND round_num >= ?"  # noqa: S608
                f" AND {WRITTEN_AT} < ?)",
                (run, round_at_least, mtime_ns),
            )
            for t in _BOTH
        )

    def begun_by(self, run: int, mtime_ns: int) -> bool:
        return any(
            self._one(
                f"SELECT EXISTS (SELECT 1 FROM {t} WHERE run = ? AND {WRITTEN_AT} <= ?)",  # noqa: S608
                (run, mtime_ns),
            )
            for t in _BOTH
        )

    def run_at(self, mtime_ns: int) -> int:
        begun = [
            self._one(f"SELECT MAX(run) FROM {t} WHERE {WRITTEN_AT} <= ?", (mtime_ns,))  # noqa: S608
            for t in _BOTH
        ]
        runs = [int(r) for r in begun if r is not None]  # type: ignore[call-overload]
        if runs:
            return max(runs)
        oldest = [self._one(f"SELECT MIN(run) FROM {t}", ()) for t in _BOTH]  # noqa: S608
        return min(int(r) for r in oldest if r is not None)  # type: ignore[call-overload]
