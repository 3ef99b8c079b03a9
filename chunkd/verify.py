"""Check a store end to end: every chunk's bytes against its hash, every round against its file.

Like restic's ``check --read-data``: nothing is trusted. Each stored chunk is decoded and
re-hashed; each round is rebuilt (into a sink that keeps nothing) and compared with the SHA-256 of
the file that was ingested. Every problem names the round and chunk it concerns.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from chunkd.errors import ChunkdError, IntegrityError, NotFoundError
from chunkd.restore import restore_round
from chunkd.store import ChunkStore, StoredChunk

#: Pins a round for the duration of its check (the daemon's lease table).
Hold = Callable[[int], AbstractContextManager[object]]


@dataclass(frozen=True, slots=True)
class Problem:
    round_num: int | None
    chunk_id: int | None
    chunk_hash: str | None
    what: str

    def to_dict(self) -> dict[str, object]:
        return {
            "round": self.round_num,
            "chunk_id": self.chunk_id,
            "chunk_hash": self.chunk_hash,
            "problem": self.what,
        }


@dataclass(frozen=True, slots=True)
class VerifyReport:
    rounds_checked: int
    chunks_checked: int
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_store(
    store: ChunkStore, hold: Hold | None = None, step: Callable[[], None] | None = None
) -> VerifyReport:
    """Check every chunk and every round of ``store``; see the module docstring.

    ``step()`` is called after each chunk and each round (a progress bar's tick: their count
    is ``store.stats().chunks + .rounds``, as far as retention leaves them meanwhile).

    ``hold(round_num)`` pins a round while it is checked (the daemon passes its lease table, so
    retention cannot remove the round or its chunks mid-check). Without it (``verify --db``
    beside a running daemon) a round that was pruned or replaced while being checked is not a
    problem: it is checked again as it is now, or skipped if it is gone.
    """
    bad_hashes: set[str] = set()
    chunks_checked = 0
    for stored in store.iter_chunks():
        if step is not None:
            step()
        verdict = _check_chunk(store, stored)
        if verdict is None:
            continue  # removed by retention since it was listed: not a problem of the store
        chunks_checked += 1
        if not verdict:
            bad_hashes.add(stored.chunk_hash)
    problems: list[Problem] = []
    rounds_checked = 0
    referenced: set[str] = set()
    for round_num in store.round_numbers():
        if step is not None:
            step()
        with hold(round_num) if hold else contextlib.nullcontext():
            found = _check_round_settled(store, round_num, bad_hashes, referenced)
        if found is None:
            continue  # pruned while we looked: not a problem of the store
        rounds_checked += 1
        problems.extend(found)
    for chunk_hash in sorted(bad_hashes - referenced):
        problems.append(
            Problem(None, None, chunk_hash, "unreferenced chunk's bytes do not match their SHA-256")
        )
    return VerifyReport(rounds_checked, chunks_checked, tuple(problems))


def _check_chunk(store: ChunkStore, stored: StoredChunk) -> bool | None:
    """True if the chunk decodes to its hash, False if it is damaged, None if it is gone.

    ``stored`` was read a few chunks ago and outside any lease: since then retention may have
    re-coded it or a link of its chain as a key chunk and removed what nothing needs any more.
    So a failure is judged again on the chunk as it is now, chain and all from one read
    transaction (docs/DESIGN.md "Readers see one consistent chain"): gone is not damage, and
    only what fails within one snapshot is reported.
    """
    try:
        if _matches(stored, store.decode_chunk(stored)):
            return True
    except IntegrityError:
        pass
    try:
        chain = store.read_chain(stored.chunk_hash)
        return None if chain is None else _matches(stored, chain.decode())
    except IntegrityError:
        return False  # a chain broken (or endless) within one snapshot


def _matches(stored: StoredChunk, raw: bytes) -> bool:
    return hashlib.sha256(raw).hexdigest() == stored.chunk_hash


def _check_round_settled(
    store: ChunkStore, round_num: int, bad_hashes: set[str], referenced: set[str]
) -> list[Problem] | None:
    """Problems of one round, or None if it no longer exists; retried once if it changed."""
    for _attempt in range(2):
        before = _file_sha(store, round_num)
        if before is None:
            return None
        found = _check_round(store, round_num, bad_hashes, referenced)
        if not found or _file_sha(store, round_num) == before:
            return found
    return found


def _file_sha(store: ChunkStore, round_num: int) -> str | None:
    try:
        return store.get_round(round_num).file_sha256
    except NotFoundError:
        return None


def _check_round(
    store: ChunkStore, round_num: int, bad_hashes: set[str], referenced: set[str]
) -> list[Problem]:
    problems = []
    for ref in store.round_chunks(round_num):
        referenced.add(ref.chunk_hash)
        if ref.chunk_hash in bad_hashes:
            what = "stored bytes do not match their SHA-256"
        elif not store.has_chunk(ref.chunk_hash):
            what = "chunk is referenced but not stored"
        else:
            continue
        problems.append(Problem(round_num, ref.chunk_id, ref.chunk_hash, what))
    if problems:
        return problems
    try:  # from the store alone: the ingest cache proves nothing about the database
        restore_round(store, round_num, _discard, recent=None)
    except ChunkdError as e:
        problems.append(Problem(round_num, None, None, str(e)))
    return problems


def _discard(_data: bytes | memoryview) -> None:
    return None
