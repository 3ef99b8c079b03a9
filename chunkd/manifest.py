"""The values every layer passes around: storages in flat order, chunk descriptors, round layouts.

A round is stored as three things (see README "On-disk format"):

* its **chunks**: ``chunk_metadata`` rows in the seed's format (``parts_info`` is the JSON of
  :meth:`ChunkSpec.parts_json`), the bytes in ``chunk_data`` keyed by SHA-256;
* its **layout** (:class:`RoundLayout`, JSON in ``rounds.layout``): the storages in flat order and
  the file's segments in file order, each either a run of residue bytes or one storage's payload;
* its **residue**: the concatenated residue runs (zip headers, ``data.pkl``, small records).

With those, ``file = for segment in layout.segments: residue run | storage bytes from chunks``.
Everything here is plain data with JSON round trips; no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

LAYOUT_VERSION = 1


@dataclass(frozen=True, slots=True)
class StorageSlot:
    """One storage of the flat index (checkpoint order), and where its payload lies in the file."""

    name: str
    key: str
    dtype: str
    itemsize: int
    numel: int
    shape: tuple[int, ...]
    file_offset: int

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    def to_json(self) -> list[object]:
        return [
            self.name,
            self.key,
            self.dtype,
            self.itemsize,
            self.numel,
            list(self.shape),
            self.file_offset,
        ]

    @classmethod
    def from_json(cls, raw: list[object]) -> StorageSlot:
        name, key, dtype, itemsize, numel, shape, offset = raw
        return cls(
            str(name),
            str(key),
            str(dtype),
            int(itemsize),
            int(numel),  # type: ignore[arg-type]
            tuple(int(d) for d in shape),
            int(offset),
        )  # type: ignore[union-attr, arg-type]


@dataclass(frozen=True, slots=True)
class Part:
    """A contiguous element range ``[flat_start, flat_end)`` of one storage, inside a chunk."""

    name: str
    flat_start: int
    flat_end: int
    shape: tuple[int, ...]
    itemsize: int

    @property
    def nbytes(self) -> int:
        return (self.flat_end - self.flat_start) * self.itemsize


@dataclass(frozen=True, slots=True)
class ChunkSpec:
    """Chunk ``chunk_id`` of a round: the seed's descriptor plus its range in the flat bytes."""

    chunk_id: int
    parts: tuple[Part, ...]
    flat_size: int
    byte_start: int
    byte_end: int

    @property
    def nbytes(self) -> int:
        return self.byte_end - self.byte_start

    def parts_dict(self) -> dict[str, list[tuple[int, int, list[int]]]]:
        """The seed's ``parts``: ``{name: [(flat_start, flat_end, shape), ...]}``."""
        out: dict[str, list[tuple[int, int, list[int]]]] = {}
        for p in self.parts:
            out.setdefault(p.name, []).append((p.flat_start, p.flat_end, list(p.shape)))
        return out

    def parts_json(self) -> str:
        return json.dumps(self.parts_dict(), separators=(",", ":"))

    def descriptor(self) -> dict[str, object]:
        """Exactly the seed's chunk descriptor."""
        return {"chunk_id": self.chunk_id, "parts": self.parts_dict(), "flat_size": self.flat_size}

    def itemsizes(self) -> tuple[tuple[int, int], ...]:
        """``(nbytes, itemsize)`` per part: what the codec's byte grouping needs."""
        return tuple((p.nbytes, p.itemsize) for p in self.parts)


#: A segment of the original file: ("r", n) = the next n residue bytes; ("s", i) = storage i.
Segment = tuple[str, int]


@dataclass(frozen=True, slots=True)
class RoundLayout:
    """How to put a round's file back together from its residue and its chunks."""

    file_size: int
    file_sha256: str
    storages: tuple[StorageSlot, ...]
    segments: tuple[Segment, ...]

    @property
    def flat_bytes(self) -> int:
        return sum(s.nbytes for s in self.storages)

    def storage_byte_starts(self) -> list[int]:
        """Offset of each storage in the flat byte stream (the chunks' coordinate system)."""
        starts, pos = [], 0
        for s in self.storages:
            starts.append(pos)
            pos += s.nbytes
        return starts

    def to_json(self) -> str:
        return json.dumps(
            {
                "v": LAYOUT_VERSION,
                "file_size": self.file_size,
                "file_sha256": self.file_sha256,
                "storages": [s.to_json() for s in self.storages],
                "segments": [list(seg) for seg in self.segments],
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> RoundLayout:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError(f"round layout is a JSON {type(raw).__name__}, not an object")
        if raw.get("v") != LAYOUT_VERSION:
            raise ValueError(f"unknown round layout version {raw.get('v')!r}")
        layout = cls(
            file_size=int(raw["file_size"]),
            file_sha256=str(raw["file_sha256"]),
            storages=tuple(StorageSlot.from_json(s) for s in raw["storages"]),
            segments=tuple((str(k), int(v)) for k, v in raw["segments"]),
        )
        for kind, value in layout.segments:
            in_residue = kind == "r" and value >= 0
            if not in_residue and not (kind == "s" and 0 <= value < len(layout.storages)):
                raise ValueError(f"round layout segment {[kind, value]!r} is invalid")
        return layout
