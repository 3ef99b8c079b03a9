"""Check a store end to end: every chunk's bytes against its hash, every round against its file.

Like restic's ``check --read-data``: nothing is trusted. Each stored chunk is decoded and
re-hashed; each round is rebuilt (into a sink that keeps nothing) and compared with the SHA-256 of
the file that was ingested. Every problem names the round and chunk it concerns.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from chunkd.errors import ChunkdError
from chunkd.restore import restore_round
from chunkd.store import ChunkStore


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


def verify_store(store: ChunkStore) -> VerifyReport:
    problems: list[Problem] = []
    bad_hashes: set[str] = set()
    chunks_checked = 0
    for stored in store.iter_chunks():
        chunks_checked += 1
        try:
            raw = store.decode_chunk(stored)
            ok = hashlib.sha256(raw).hexdigest() == stored.chunk_hash
        except ChunkdError:
            ok = False
        if not ok:
            bad_hashes.add(stored.chunk_hash)
    rounds = store.round_numbers()
    for round_num in rounds:
        for ref in store.round_chunks(round_num):
            if ref.chunk_hash in bad_hashes:
                problems.append(
                    Problem(
                        round_num,
                        ref.chunk_id,
                        ref.chunk_hash,
                        "stored bytes do not match their SHA-256",
                    )
                )
            elif not store.has_chunk(ref.chunk_hash):
                problems.append(
                    Problem(
                        round_num,
                        ref.chunk_id,
                        ref.chunk_hash,
                        "chunk is referenced but not stored",
                    )
                )
        if any(p.round_num == round_num for p in problems):
            continue
        try:
            restore_round(store, round_num, _discard)
        except ChunkdError as e:
            problems.append(Problem(round_num, None, None, str(e)))
    referenced = {ref.chunk_hash for r in rounds for ref in store.round_chunks(r)}
    for chunk_hash in sorted(bad_hashes - referenced):
        problems.append(
            Problem(None, None, chunk_hash, "unreferenced chunk's bytes do not match their SHA-256")
        )
    return VerifyReport(len(rounds), chunks_checked, tuple(problems))


def _discard(_data: bytes | memoryview) -> None:
    return None
