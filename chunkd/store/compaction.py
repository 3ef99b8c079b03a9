"""Give free pages back to the filesystem without rewriting what stays (docs/DESIGN.md
"Retention leaves at most one round free").

SQLite shrinks an ``auto_vacuum=INCREMENTAL`` file by moving its last used pages into free pages
lower down and truncating. Under a rollback journal every moved page costs about three page
writes (its new place, and in the journal its old content, which the truncation must be able to
restore, and the old content of the page that points to it): measured 2.9 bytes written per byte
moved. After a backlog (ten rounds ingested before the first prune) the kept rounds are exactly
the pages at the end of the file, so that would write about three times the kept rounds.

A chunk's bytes do not have to move page by page: a chunk whose pages lie past the target size is
*copied* (one ``INSERT ... SELECT`` into free pages below, which SQLite writes once and does not
journal: their old content is free) and its original row deleted, in one transaction, so nothing
half-done is ever visible. Its old pages are then free pages at the end of the file, which the
incremental vacuum drops without moving anything. What SQLite still moves itself is the few
b-tree pages (and any chunk its allocator happened to place high), at its cost.

Where each chunk lies comes from the ``dbstat`` virtual table (one read of the file, only when
something must go back). A build without it falls back to SQLite's page mover.

The plan is pure (:func:`plan_compaction`); :mod:`chunkd.store.core` executes it. Every step is
its own transaction of at most ``BATCH_BYTES``: the writer does not spill its cache, so a bigger
transaction would hold every page it dirties in memory (a 256 MiB vacuum in one transaction was
most of the daemon's 312-400 MiB retention peaks).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ChunkPlace:
    """Where one stored chunk's bytes end: its row and the highest page of its overflow chain."""

    rowid: int
    last_page: int
    stored_size: int
    #: pages of its overflow chain, and how many of them lie past the target size
    pages: int = 1
    pages_past: int = 1


@dataclass(frozen=True, slots=True)
class CompactionPlan:
    #: the page count the file should end with
    target_pages: int
    #: chunks to copy below ``target_pages``, highest first, in batches (one transaction each)
    batches: tuple[tuple[ChunkPlace, ...], ...]


def target_pages(page_count: int, free_pages: int, allowance_pages: int) -> int:
    """The size to shrink to: every free page beyond the allowance goes; ``page_count`` if none."""
    excess = free_pages - max(0, allowance_pages)
    return page_count - excess if excess > 0 else page_count


def worth_copying(place: ChunkPlace) -> bool:
    """Copying writes each page of the chunk about once (1.3x with its b-tree pages, measured),
    SQLite's mover about three times each page past the end (2.9x): copy a chunk when at least
    half its pages lie past the end, leave the other pages to SQLite."""
    return 2 * place.pages_past >= place.pages


def plan_compaction(places: Sequence[ChunkPlace], target: int, batch_bytes: int) -> CompactionPlan:
    """The chunks worth copying below ``target``, highest first, batched by stored bytes.

    Highest first, and the vacuum after each batch drops the pages it freed: so freed pages past
    the target leave the free list before the next batch's copies could be placed in them.
    """
    movers = sorted(
        (p for p in places if p.last_page > target and worth_copying(p)),
        key=lambda p: -p.last_page,
    )
    batches: list[tuple[ChunkPlace, ...]] = []
    batch: list[ChunkPlace] = []
    size = 0
    for place in movers:
        batch.append(place)
        size += place.stored_size
        if size >= batch_bytes:
            batches.append(tuple(batch))
            batch, size = [], 0
    if batch:
        batches.append(tuple(batch))
    return CompactionPlan(target, tuple(batches))


def _path_key(path: str) -> tuple[int, ...]:
    """``'/00a/003/'`` -> ``(10, 3)``: dbstat's page paths in tree order (hex, any width)."""
    return tuple(int(part, 16) for part in path.strip("/").split("/") if part)


_PLACES_SQL = (
    "SELECT CASE WHEN pagetype = 'overflow' THEN substr(path, 1, instr(path, '+') - 1)"
    " ELSE path END AS cell, MAX(pagetype = 'leaf'), MAX(pageno), MAX(ncell), COUNT(*),"
    " SUM(pageno > ?) FROM dbstat WHERE name = 'chunk_data' GROUP BY cell"
)


def chunk_places(conn: sqlite3.Connection, target: int) -> list[ChunkPlace] | None:
    """Where every chunk with an overflow chain ends; None without ``dbstat`` (or if its picture
    does not match the table, which would be a bug: then nothing is copied).

    dbstat names pages by path: a leaf ``/000/003/``, the cell *k* on it ``/000/003/00k``, that
    cell's overflow pages ``/000/003/00k+000000``... Leaves in tree order hold the rows in rowid
    order, so the *k*-th cell overall is the *k*-th rowid. Aggregated in SQL: one row per leaf
    and per chunk, never one per page.
    """
    try:
        rows = conn.execute(_PLACES_SQL, (target,)).fetchall()
    except sqlite3.Error:
        return None
    leaves: list[tuple[tuple[int, ...], int]] = []
    chains: dict[tuple[tuple[int, ...], int], tuple[int, int, int]] = {}
    for cell, is_leaf, last_page, ncell, pages, past in rows:
        if is_leaf:
            leaves.append((_path_key(cell), int(ncell)))
        elif not cell.endswith("/"):  # a cell with an overflow chain
            leaf, _, index = cell.rpartition("/")
            chains[(_path_key(leaf), int(index, 16))] = (int(last_page), int(pages), int(past))
    if not chains:
        return []
    leaves.sort()
    sizes = conn.execute("SELECT id, length(data) FROM chunk_data ORDER BY id")
    places: list[ChunkPlace] = []
    for leaf, ncell in leaves:
        for index in range(ncell):
            row = sizes.fetchone()
            if row is None:
                return None
            chain = chains.get((leaf, index))
            if chain is not None:
                places.append(ChunkPlace(int(row[0]), chain[0], int(row[1]), chain[1], chain[2]))
    if sizes.fetchone() is not None:
        return None
    return places


def batches_of(plan: CompactionPlan) -> Iterator[tuple[tuple[ChunkPlace, ...], int]]:
    """Each batch with the level the file may be cut to after it: the highest page of the chunks
    still to copy (or the target once none is left)."""
    for i, batch in enumerate(plan.batches):
        following = plan.batches[i + 1] if i + 1 < len(plan.batches) else ()
        level = max([plan.target_pages, *(p.last_page for p in following)])
        yield batch, level


# -- execution (the writer's connection; every step its own bounded transaction) -------------------


def round_pages(conn: sqlite3.Connection) -> int:
    """One round's worth of pages: what the largest kept round's chunks take as stored (each
    chunk's partial last page and its row counted as a page); retention leaves this many free
    pages for the next round to fill.

    The largest, not the newest: with delta chains the newest round may be a small delta while
    the next one is a key, and with the newest round kept whole it is the largest."""
    rows = conn.execute(
        "SELECT SUM(i.stored_size), COUNT(*) FROM (SELECT DISTINCT round_num, chunk_hash"
        " FROM chunk_metadata) AS m JOIN chunk_info AS i USING (chunk_hash)"
        " GROUP BY m.round_num"
    ).fetchall()
    if not rows:
        return 0
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    return max(-(-int(stored) // page_size) + int(chunks) for stored, chunks in rows)


def newest_first(conn: sqlite3.Connection, chunks: Iterable[str]) -> list[str]:
    """``chunks`` (hashes), the last stored first: the order garbage collection frees them in.

    A file that grew by appending holds them in that order, so the pages freed last, which
    SQLite hands out first, are the lowest ones, and a compaction that follows copies what it
    moves into the front of the file."""
    order: dict[str, int] = {}
    ordered = sorted(chunks)
    for i in range(0, len(ordered), 500):
        batch = ordered[i : i + 500]
        marks = ",".join("?" * len(batch))
        rows = conn.execute(
            f"SELECT chunk_hash, id FROM chunk_data WHERE chunk_hash IN ({marks})",  # noqa: S608
            batch,
        )
        order.update((chunk_hash, int(rowid)) for chunk_hash, rowid in rows)
    return sorted(ordered, key=lambda h: -order.get(h, 0))


def _temporary_name(chunk_hash: str) -> str:
    """A name no stored chunk has (hashes are hex), of the same length: renaming the copy back
    then rewrites only its row's first page (SQLite overwrites a same-size record in place and
    skips unchanged overflow pages), never the chunk's bytes again."""
    return "~" + chunk_hash[1:]


def relocate(conn: sqlite3.Connection, batch: Sequence[ChunkPlace], before_commit: Callable) -> int:
    """Copy each chunk of ``batch`` into free pages, then drop the originals, in one transaction.

    All copies first: pages freed by a dropped original would otherwise be the first the next
    copy is placed in. Returns the bytes copied.
    """
    copied = 0
    try:
        conn.execute("BEGIN IMMEDIATE")
        moved: list[tuple[int, str, str]] = []
        names: set[str] = set()
        for place in batch:
            row = conn.execute("SELECT chunk_hash FROM chunk_data WHERE id = ?", (place.rowid,))
            found = row.fetchone()
            if found is None or _temporary_name(found[0]) in names:
                continue  # gone, or its temporary name is taken in this batch: leave it to SQLite
            temporary = _temporary_name(found[0])
            names.add(temporary)
            conn.execute(
                "INSERT INTO chunk_data (chunk_hash, data, created_at, codec, raw_size, base_hash)"
                " SELECT ?, data, created_at, codec, raw_size, base_hash FROM chunk_data"
                " WHERE id = ?",
                (temporary, place.rowid),
            )
            moved.append((place.rowid, found[0], temporary))
            copied += place.stored_size
        for rowid, chunk_hash, temporary in moved:
            conn.execute("DELETE FROM chunk_data WHERE id = ?", (rowid,))
            conn.execute(
                "UPDATE chunk_data SET chunk_hash = ? WHERE chunk_hash = ?", (chunk_hash, temporary)
            )
        before_commit()
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return copied


def vacuum_to(
    conn: sqlite3.Connection, pages: int, step_pages: int, before_commit: Callable
) -> None:
    """Shrink the file towards ``pages`` pages with the incremental vacuum, ``step_pages`` per
    transaction. ``executescript`` because the pragma frees one page per step and ``execute``
    steps a statement that returns no rows only once."""
    while True:
        count = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        step = min(count - pages, free, step_pages)
        if step <= 0:
            return
        before_commit()
        conn.executescript(f"PRAGMA incremental_vacuum({int(step)});")
        if conn.execute("PRAGMA page_count").fetchone()[0] >= count:
            return  # nothing more can go (the pages left are pointer-map pages)


def compact(
    conn: sqlite3.Connection, allowance_pages: int, batch_bytes: int, before_commit: Callable
) -> None:
    """Every free page beyond ``allowance_pages`` back to the filesystem (see the module doc)."""
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    count = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    target = target_pages(count, free, allowance_pages)
    if target >= count:
        return
    step_pages = max(1, batch_bytes // page_size)
    places = chunk_places(conn, target)
    if places:
        for batch, level in batches_of(plan_compaction(places, target, batch_bytes)):
            relocate(conn, batch, before_commit)
            vacuum_to(conn, level, step_pages, before_commit)
    vacuum_to(conn, target, step_pages, before_commit)
