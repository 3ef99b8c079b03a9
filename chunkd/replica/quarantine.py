"""What the chunk sweep keeps for a manifest it cannot read: the chunks the object still names.

Pure: bytes in, hashes out. The rule (docs/REPLICA.md, "Unreadable manifests"):

* a manifest the sweep cannot use (larger than :data:`~chunkd.replica.bounds.MAX_MANIFEST_BYTES`,
  not JSON, not a manifest of a version this chunkd knows, or stating sizes no chunkd writes) is
  **quarantined**: logged with its host, client and key, counted in the sweep's result, left in
  place (it is its host's), and the sweep goes on. Before issue 19 it stopped the sweep, for every
  host, until someone removed it.
* a manifest names a chunk only by spelling its SHA-256 in its body: version 1 spells each as 64
  lowercase hex characters, and any later version must do the same (docs/REPLICA.md). So the
  chunks a quarantined object could name, whatever it was meant to be, are exactly those whose
  hash appears in it as 64 hex characters (in either case: one flipped bit turns ``a`` into
  ``A``); a chunk whose hash appears nowhere in it cannot be named by it. The sweep keeps every
  unmarked chunk the object spells and deletes the rest as usual, so every other host's garbage
  is still collected.
* not by time: by the write order every chunk a manifest names was in the bucket *before* the
  manifest, so keeping the chunks newer than an unreadable manifest protects none of its own,
  and keeping the older ones stops the collection of everything that existed when the bad object
  was written, for as long as it stays: the stopped sweep again.
* bounded: the object is streamed in pieces (memory: one piece, plus the sweep's candidates), up
  to :data:`~chunkd.replica.bounds.MAX_SCAN_BYTES`. A larger object cannot be a manifest any
  chunkd wrote (some four million chunks; the manifest is built in memory as Python objects
  several times its size) and names nothing.
* the limit: a hash that is no longer spelled in the object (damaged inside its 64 characters)
  is not protected; no reader could have restored that chunk's round from the object either.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

_HEX_RUN = re.compile(rb"[0-9a-fA-F]{64,}")
_HASH_CHARS = 64


@dataclass(frozen=True, slots=True)
class Quarantined:
    """An object under a manifest key that the sweep could not use, and why."""

    key: str
    host: str
    client_id: str
    round_num: int
    size: int
    reason: str

    def log_fields(self) -> dict[str, object]:
        return {
            "host": self.host,
            "client": self.client_id,
            "round": self.round_num,
            "key": self.key,
            "size": self.size,
            "reason": self.reason,
        }


def named_hashes(pieces: Iterable[bytes], wanted: Collection[str]) -> set[str]:
    """The hashes of ``wanted`` (lowercase hex) that the concatenated ``pieces`` spell anywhere,
    in either case, also inside a longer run of hex digits or across two pieces."""
    found: set[str] = set()
    tail = b""
    for piece in pieces:
        window = tail + piece
        for match in _HEX_RUN.finditer(window):
            run = match.group().lower().decode("ascii")
            if len(run) == _HASH_CHARS:
                if run in wanted:
                    found.add(run)
            elif len(run) - _HASH_CHARS < len(wanted):  # fewer windows than candidates
                found.update(
                    h for i in range(len(run) - _HASH_CHARS + 1) if (h := run[i : i + 64]) in wanted
                )
            else:
                found.update(h for h in wanted if h in run)
        # a hash that starts in this piece and ends in the next starts in its last 63 bytes
        tail = window[-(_HASH_CHARS - 1) :]
    return found
