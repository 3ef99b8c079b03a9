"""The named tensors of a stored round, from the database alone; safetensors export.

The round is rebuilt into an anonymous temporary file (bounded memory, verified SHA-256), its
``data.pkl`` is read with the same non-executing scanner as at ingest, and each tensor is cut out
of its storage with its offset, shape and stride. Tensors come back as numpy arrays whose element
width matches the torch dtype; dtypes numpy lacks (bfloat16, float8) are returned as unsigned
integers of the same width, with the torch dtype name alongside, so no bit is reinterpreted.

torch is imported only by :func:`to_torch` and :func:`export_safetensors`, never by ingest or
restore.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chunkd.checkpoint import parse_checkpoint, read_exact
from chunkd.errors import RequestError
from chunkd.pickle_scan import TensorRef, walk_tensors
from chunkd.restore import restore_round
from chunkd.store import ChunkStore

#: torch dtype name -> numpy dtype with the same element width and, where possible, meaning.
_NUMPY_DTYPES = {
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


@dataclass(frozen=True, slots=True)
class TensorData:
    """A tensor read back from the store: its torch dtype name and its elements."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    array: np.ndarray


def iter_file_tensors(fd: int) -> Iterator[TensorData]:
    """The named tensors of the checkpoint open at ``fd`` (already verified or trusted)."""
    size = os.fstat(fd).st_size
    parsed = parse_checkpoint(fd, size)
    offsets = {s.key: s.file_offset for s in parsed.storages}
    for name, ref in walk_tensors(parsed.scanned.root):
        yield _cut_tensor(fd, name, ref, offsets[ref.storage.key])


def _cut_tensor(fd: int, name: str, ref: TensorRef, file_offset: int) -> TensorData:
    np_dtype = np.dtype(_NUMPY_DTYPES[ref.dtype])
    storage = np.frombuffer(read_exact(fd, file_offset, ref.storage.nbytes), dtype=np.uint8)
    elements = storage[: len(storage) // np_dtype.itemsize * np_dtype.itemsize].view(np_dtype)
    if ref.numel == 0:
        array = np.empty(ref.shape, dtype=np_dtype)
    else:
        array = np.lib.stride_tricks.as_strided(
            elements[ref.offset :],
            shape=ref.shape,
            strides=tuple(s * np_dtype.itemsize for s in ref.stride),
            writeable=False,
        ).copy()
    return TensorData(name=name, dtype=ref.dtype, shape=ref.shape, array=array)


def read_round_tensors(store: ChunkStore, round_num: int) -> dict[str, TensorData]:
    """Every named tensor of a stored round (tied weights and views each under their own name)."""
    with tempfile.TemporaryFile(prefix="chunkd-export-") as tmp:
        restore_round(store, round_num, tmp.write)
        tmp.flush()
        return {t.name: t for t in iter_file_tensors(tmp.fileno())}


def to_torch(tensor: TensorData) -> Any:
    """The tensor as a ``torch.Tensor`` of its original dtype (imports torch)."""
    import torch

    base = torch.from_numpy(np.array(tensor.array, order="C", copy=True))
    dtype = getattr(torch, tensor.dtype)
    return base.view(dtype) if base.dtype != dtype else base


def export_safetensors(store: ChunkStore, round_num: int, out: str | os.PathLike[str]) -> int:
    """Write a round's named tensors as a safetensors file; returns the number of tensors."""
    from safetensors.torch import save_file

    tensors = read_round_tensors(store, round_num)
    if not tensors:
        raise RequestError(f"round {round_num} holds no tensors to export")
    # safetensors refuses shared storage; each tensor was copied out above, so none is shared.
    save_file({name: to_torch(t).contiguous() for name, t in tensors.items()}, str(Path(out)))
    return len(tensors)
