"""The named tensors of a stored round, from the database alone; streamed safetensors export.

Nothing is rebuilt on disk and nothing big is held in memory. A stored round is read as a
virtual file (:class:`StoredRound`): its residue (zip headers, ``data.pkl``) from the round's
row, storage payloads from the chunks that cover them (each verified against its SHA-256 as it
is read). ``data.pkl`` is parsed with the same non-executing scanner as at ingest, the
safetensors header is computed from the tensors' shapes alone, and then each tensor is written
straight from its chunks:

* a tensor that is a contiguous run of its storage is copied chunk by chunk (memory: a few
  chunks);
* a strided view (a transpose, a slice, an ``expand``) reads the span of storage it touches (at
  most that storage, i.e. at most the largest tensor) and writes its elements in row blocks of
  at most :data:`BLOCK_BYTES`.

A view's *logical* size can dwarf its storage: a 4-byte storage viewed with stride 0 as (16384,
16384) is 1 GiB. An export whose tensors add up to more than :func:`logical_limit` (twice the
checkpoint plus 64 MiB) is refused, so a 2 KB file cannot make the daemon write gigabytes.

torch is imported only by :func:`to_torch`; numpy only here, never by ingest or restore.
"""

from __future__ import annotations

import bisect
import json
import os
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from chunkd.checkpoint import ParsedCheckpoint, parse_structure
from chunkd.errors import IntegrityError, RequestError
from chunkd.pickle_scan import DTYPE_ITEMSIZE, TensorRef
from chunkd.restore import Write, _ChunkReader
from chunkd.store import ChunkStore
from chunkd.tensor_names import is_contiguous, walk_tensors

#: Largest piece a strided tensor is written in.
BLOCK_BYTES: Final = 1 << 20
#: Slack on top of twice the checkpoint's size that an export's tensors may add up to.
LOGICAL_SLACK_BYTES: Final = 64 << 20

#: torch dtype name -> safetensors dtype.
SAFETENSORS_DTYPES: Final = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint64": "U64",
    "uint32": "U32",
    "uint16": "U16",
    "uint8": "U8",
    "bool": "BOOL",
    "complex64": "C64",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e4m3fnuz": "F8_E4M3FNUZ",
    "float8_e5m2": "F8_E5M2",
    "float8_e5m2fnuz": "F8_E5M2FNUZ",
}

#: torch dtype name -> numpy dtype of the same width (for :class:`TensorData` arrays).
_NUMPY_DTYPES: Final = {
    "float64": np.float64,
    "float32": np.float32,
    "float16": np.float16,
    "bfloat16": np.uint16,
    "complex128": np.complex128,
    "complex64": np.complex64,
    "complex32": np.uint32,
    "int64": np.int64,
    "int32": np.int32,
    "int16": np.int16,
    "int8": np.int8,
    "uint64": np.uint64,
    "uint32": np.uint32,
    "uint16": np.uint16,
    "uint8": np.uint8,
    "bool": np.bool_,
    "float8_e4m3fn": np.uint8,
    "float8_e5m2": np.uint8,
    "float8_e4m3fnuz": np.uint8,
    "float8_e5m2fnuz": np.uint8,
    "float8_e8m0fnu": np.uint8,
}


def logical_limit(file_size: int) -> int:
    """The most bytes of tensors an export of a checkpoint of ``file_size`` bytes may hold."""
    return 2 * file_size + LOGICAL_SLACK_BYTES


class StoredRound:
    """A stored round as a random-access file, rebuilt piecewise from residue and chunks."""

    def __init__(
        self,
        store: ChunkStore,
        round_num: int,
        worker: ThreadPoolExecutor,
        generation: int | None = None,
    ) -> None:
        self.round_num = round_num
        self.layout, self._residue, chunks = store.read_round(round_num, generation)
        self.chunks = _ChunkReader(store, round_num, self.layout, chunks, worker)
        self.storage_flat = self.layout.storage_byte_starts()
        # (file offset, length, "r" + residue offset | "s" + flat offset), in file order
        self._pieces: list[tuple[int, int, str, int]] = []
        file_pos = residue_pos = 0
        for kind, value in self.layout.segments:
            if kind == "r":
                self._pieces.append((file_pos, value, "r", residue_pos))
                file_pos += value
                residue_pos += value
            elif self.layout.storages[value].nbytes:
                nbytes = self.layout.storages[value].nbytes
                self._pieces.append((file_pos, nbytes, "s", self.storage_flat[value]))
                file_pos += nbytes
        self._starts = [p[0] for p in self._pieces]
        self.file_size = file_pos

    def read_at(self, offset: int, size: int) -> bytes:
        """``size`` bytes of the original file at ``offset`` (small reads: headers, data.pkl)."""
        if offset < 0 or offset + size > self.file_size:
            raise IntegrityError(f"round {self.round_num}: read past the end of its layout")
        out = bytearray()
        index = bisect.bisect_right(self._starts, offset) - 1
        while size > 0:
            start, length, kind, base = self._pieces[index]
            lo = offset - start
            n = min(size, length - lo)
            if kind == "r":
                out += self._residue[base + lo : base + lo + n]
            else:
                self.chunks.write_range(base + lo, base + lo + n, out.extend)
            offset += n
            size -= n
            index += 1
        return bytes(out)

    def parse(self) -> ParsedCheckpoint:
        return parse_structure(self.read_at, self.file_size)


@dataclass(frozen=True, slots=True)
class ExportTensor:
    name: str
    ref: TensorRef
    #: flat byte offset of the tensor's first element
    flat_start: int

    @property
    def nbytes(self) -> int:
        return self.ref.numel * DTYPE_ITEMSIZE[self.ref.dtype]


def _tensors(stored: StoredRound) -> list[ExportTensor]:
    parsed = stored.parse()
    index_of = {slot.key: i for i, slot in enumerate(stored.layout.storages)}
    out = []
    for name, ref in walk_tensors(parsed.scanned.root):
        index = index_of.get(ref.storage.key)
        if index is None:
            raise IntegrityError(f"round {stored.round_num}: no stored storage {ref.storage.key}")
        flat = stored.storage_flat[index] + ref.offset * DTYPE_ITEMSIZE[ref.dtype]
        out.append(ExportTensor(name, ref, flat))
    return out


def write_tensor(stored: StoredRound, tensor: ExportTensor, write: Write) -> None:
    """The tensor's elements, C-contiguous, little-endian, through ``write``."""
    ref = tensor.ref
    itemsize = DTYPE_ITEMSIZE[ref.dtype]
    if tensor.nbytes == 0:
        return
    if is_contiguous(ref.shape, ref.stride):
        stored.chunks.write_range(tensor.flat_start, tensor.flat_start + tensor.nbytes, write)
        return
    span = (1 + sum((d - 1) * s for d, s in zip(ref.shape, ref.stride, strict=True))) * itemsize
    buf = bytearray()
    stored.chunks.write_range(tensor.flat_start, tensor.flat_start + span, buf.extend)
    elements = np.frombuffer(buf, dtype=np.dtype((np.void, itemsize)))
    view = np.lib.stride_tricks.as_strided(
        elements,
        shape=ref.shape,
        strides=tuple(s * itemsize for s in ref.stride),
        writeable=False,
    )
    _write_blocks(view, write)


def _write_blocks(view: np.ndarray, write: Write) -> None:
    """Write ``view`` in C order, materializing at most about BLOCK_BYTES at a time."""
    if view.nbytes <= BLOCK_BYTES or view.ndim == 0:
        write(np.ascontiguousarray(view).tobytes())
        return
    row_bytes = view.nbytes // view.shape[0] if view.shape[0] else 0
    if view.ndim == 1 or row_bytes == 0:
        step = max(1, BLOCK_BYTES // view.itemsize)
        for i in range(0, view.shape[0], step):
            write(np.ascontiguousarray(view[i : i + step]).tobytes())
        return
    if row_bytes > BLOCK_BYTES:
        for i in range(view.shape[0]):
            _write_blocks(view[i], write)
        return
    step = BLOCK_BYTES // row_bytes
    for i in range(0, view.shape[0], step):
        write(np.ascontiguousarray(view[i : i + step]).tobytes())


@dataclass(frozen=True, slots=True)
class SafetensorsPlan:
    """A safetensors file ready to stream: its header and the tensors that follow it."""

    header: bytes
    tensors: tuple[ExportTensor, ...]

    @property
    def tensor_count(self) -> int:
        return len(self.tensors)

    @property
    def total_bytes(self) -> int:
        return len(self.header) + sum(t.nbytes for t in self.tensors)


def plan_safetensors(stored: StoredRound) -> SafetensorsPlan:
    """The header (8-byte length, JSON, space padding) and tensor order; checks every limit."""
    tensors = _tensors(stored)
    if not tensors:
        raise RequestError(f"round {stored.round_num} holds no tensors to export")
    limit = logical_limit(stored.layout.file_size)
    entries: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for t in tensors:
        dtype = SAFETENSORS_DTYPES.get(t.ref.dtype)
        if dtype is None:
            raise RequestError(f"tensor {t.name!r}: safetensors has no dtype for {t.ref.dtype}")
        entries[t.name] = {
            "dtype": dtype,
            "shape": list(t.ref.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
        if offset > limit:
            raise RequestError(
                f"round {stored.round_num}: its tensors' views add up to more than "
                f"{limit:,} bytes (twice the {stored.layout.file_size:,}-byte checkpoint plus "
                f"{LOGICAL_SLACK_BYTES >> 20} MiB; tensor {t.name!r} has shape "
                f"{list(t.ref.shape)}); refusing to expand them"
            )
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return SafetensorsPlan(struct.pack("<Q", len(text)) + text, tuple(tensors))


def stream_safetensors(stored: StoredRound, plan: SafetensorsPlan, write: Write) -> None:
    write(plan.header)
    for tensor in plan.tensors:
        write_tensor(stored, tensor, write)


def export_safetensors(
    store: ChunkStore,
    round_num: int,
    out: str | os.PathLike[str],
    generation: int | None = None,
) -> int:
    """Write a round's named tensors as a safetensors file; returns the number of tensors.

    ``generation``: an earlier version of a rewritten round (None: the current one), as for
    :func:`chunkd.restore.restore_round`.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunkd-export") as worker:
        stored = StoredRound(store, round_num, worker, generation)
        plan = plan_safetensors(stored)
        with open(out, "wb") as f:
            stream_safetensors(stored, plan, f.write)
    return plan.tensor_count


# -- in-memory access (tests, tools) -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TensorData:
    """A tensor read back from the store: its torch dtype name and its elements."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    array: np.ndarray


def iter_round_tensors(store: ChunkStore, round_num: int) -> Iterator[TensorData]:
    """Every named tensor of a stored round, one at a time (each fully in memory)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunkd-export") as worker:
        stored = StoredRound(store, round_num, worker)
        for tensor in _tensors(stored):
            buf = bytearray()
            write_tensor(stored, tensor, buf.extend)
            np_dtype = np.dtype(_NUMPY_DTYPES[tensor.ref.dtype])
            array = np.frombuffer(bytes(buf), dtype=np_dtype).reshape(tensor.ref.shape)
            yield TensorData(tensor.name, tensor.ref.dtype, tensor.ref.shape, array)


def read_round_tensors(store: ChunkStore, round_num: int) -> dict[str, TensorData]:
    """Every named tensor of a stored round (tied weights and views each under their own name)."""
    return {t.name: t for t in iter_round_tensors(store, round_num)}


def to_torch(tensor: TensorData) -> Any:
    """The tensor as a ``torch.Tensor`` of its original dtype (imports torch)."""
    import torch

    base = torch.from_numpy(np.array(tensor.array, order="C", copy=True))
    dtype = getattr(torch, tensor.dtype)
    return base.view(dtype) if base.dtype != dtype else base
