"""Forget one stored round version on an operator's request: plan, then remove, then collect.

``chunkd forget --client ID --round N [--generation G]`` is the way out for a version retention
should never have had to keep: a mis-numbered file (``model_240605.pth`` is round 240605, which
would be ``latest`` and hold a retention slot forever), or a bad rewrite. It names exactly one
version; without ``--generation`` that is the round's current version, and then the round's
newest earlier generation (if any) becomes current again. A round being restored is not removed
under the reader (``busy``). The file's ``sources`` row stays, so the daemon does not take the
same file again. Chunks no version needs any more go the way retention's do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection
from dataclasses import dataclass

from chunkd.deltas import promote_orphaned_deltas
from chunkd.errors import BusyError
from chunkd.prune import LeaseGate
from chunkd.store import ChunkStore, RoundInfo


@dataclass(frozen=True, slots=True)
class ForgetResult:
    #: the version removed (or, in a dry run, that would be)
    version: RoundInfo
    #: the earlier generation that is (or would be) current again, if any
    promoted: RoundInfo | None
    dry_run: bool
    chunks_removed: int
    bytes_removed: int

    def log_fields(self) -> dict[str, object]:
        v = self.version
        return {
            "round": v.round_num,
            "generation": v.generation,
            "was_current": v.current,
            "sha256": v.file_sha256,
            "source_path": v.source_path,
            "generation_now_current": self.promoted.generation if self.promoted else None,
            "chunks_removed": self.chunks_removed,
            "bytes_removed": self.bytes_removed,
            "dry_run": self.dry_run,
        }


def forget_version(
    store: ChunkStore,
    round_num: int,
    generation: int | None = None,
    *,
    leased: Collection[int] = (),
    lease_gate: LeaseGate | None = None,
    dry_run: bool = False,
) -> ForgetResult:
    """Remove one version of ``round_num`` (its current one unless ``generation`` is given).

    Raises NotFoundError (with the stored rounds) if there is no such version, BusyError if a
    restore holds the round.
    """
    with lease_gate() if lease_gate is not None else contextlib.nullcontext(leased) as held:
        version = store.get_round(round_num, generation)
        promoted = None
        if version.current:
            earlier = [
                v for v in store.list_versions() if v.round_num == round_num and not v.current
            ]
            promoted = max(earlier, key=lambda v: v.generation, default=None)
        if round_num in held:
            raise BusyError(f"round {round_num} is being restored; forget it once the restore ends")
        if dry_run:
            return ForgetResult(version, promoted, True, 0, 0)
        store.forget_version(version)
    promote_orphaned_deltas(store)  # a forgotten chain start: its successors become key chunks
    chunks, nbytes = store.collect_garbage()
    return ForgetResult(version, promoted, False, chunks, nbytes)
