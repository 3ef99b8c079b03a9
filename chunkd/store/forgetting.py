"""Removing one named round version on an operator's request (``chunkd forget``).

Retention removes versions by policy; ``forget`` removes exactly one, named by round and
generation: a mis-numbered file (``model_240605.pth`` taken as round 240605) would otherwise pin
``latest`` and hold a retention slot forever. Removing a round's *current* version makes its
newest earlier generation current again (the state before the rewrite that is being undone);
removing an earlier generation touches nothing else. Rows only, in one transaction: chunk bytes
go with the next garbage collection, as with retention ("unreference before delete").
"""

from __future__ import annotations

from chunkd.store.records import RoundInfo

Statement = tuple[str, tuple[object, ...]]

#: The newest earlier generation of a round (the one a forgotten current version gives way to).
_NEWEST_EARLIER = (
    "(SELECT id FROM round_history WHERE round_num = ? ORDER BY generation DESC LIMIT 1)"
)

_FIELDS = (
    "round_num, file_sha256, file_size, flat_bytes, chunk_count, new_chunks, new_bytes, layout,"
    " residue, source_path, created_at, generation, run, file_mtime_ns, ingest_seq"
)


_PROMOTE_ROUND = (
    f"INSERT INTO rounds ({_FIELDS}) SELECT {_FIELDS} FROM round_history"  # noqa: S608 - constants
    f" WHERE id = {_NEWEST_EARLIER}"
)
_PROMOTE_CHUNKS = (
    "INSERT INTO chunk_metadata (round_num, chunk_id, chunk_hash, parts_info, flat_size)"  # noqa: S608
    " SELECT ?, chunk_id, chunk_hash, parts_info, flat_size FROM round_history_chunks"
    f" WHERE history_id = {_NEWEST_EARLIER}"
)
_DROP_PROMOTED_CHUNKS = (
    "DELETE FROM round_history_chunks WHERE history_id ="
    " (SELECT id FROM round_history WHERE round_num = ? ORDER BY generation DESC LIMIT 1)"
)
_DROP_PROMOTED = (
    "DELETE FROM round_history WHERE id ="
    " (SELECT id FROM round_history WHERE round_num = ? ORDER BY generation DESC LIMIT 1)"
)


def forget_statements(version: RoundInfo) -> list[Statement]:
    """The statements that remove ``version`` (and promote the newest earlier generation when it
    is the current one), to run in one transaction."""
    r = version.round_num
    if not version.current:
        key = (r, version.generation)
        return [
            (
                "DELETE FROM round_history_chunks WHERE history_id IN (SELECT id FROM"
                " round_history WHERE round_num = ? AND generation = ?)",
                key,
            ),
            ("DELETE FROM round_history WHERE round_num = ? AND generation = ?", key),
        ]
    return [
        ("DELETE FROM chunk_metadata WHERE round_num = ?", (r,)),
        ("DELETE FROM rounds WHERE round_num = ?", (r,)),
        (_PROMOTE_ROUND, (r,)),
        (_PROMOTE_CHUNKS, (r, r)),
        (_DROP_PROMOTED_CHUNKS, (r,)),
        (_DROP_PROMOTED, (r,)),
    ]
