"""The storages and tensors ``data.pkl`` describes, and the checks that keep them honest.

:mod:`chunkd.pickle_scan` interprets the opcode stream; this module gives meaning to the two
torch-specific things in it: a persistent id ``('storage', StorageType, key, location, numel)``
becomes a :class:`StorageRef`, and a ``torch._utils._rebuild_tensor*`` call becomes a
:class:`TensorRef`, a strided view that must lie inside its storage. It is separate because these
records outlive the scan (chunking, rounds, naming and export all read them) and because the
bounds checks are the one place that decides which bytes of a storage a tensor may address; the
stack machine only has to hand over the untrusted arguments.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass

from chunkd.errors import NotACheckpointError, UnsafePickleError
from chunkd.pickle_rules import _DTYPE_ALIASES, _STORAGE_DTYPES, DTYPE_ITEMSIZE, MAX_DIMS, _Global


@dataclass(frozen=True, slots=True)
class StorageRef:
    """A storage record named by a persistent id; ``nbytes`` is what the record must hold."""

    key: str
    dtype: str
    numel: int

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_ITEMSIZE[self.dtype]


@dataclass(frozen=True, slots=True)
class TensorRef:
    """A tensor as data.pkl describes it: a strided view of (part of) one storage."""

    storage: StorageRef
    dtype: str
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    name: str = ""

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def storage_ref(pid: object) -> StorageRef:
    """The storage a persistent id names; the caller keeps one record per key."""
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
        raise UnsafePickleError(f"unexpected persistent id {_brief(pid)}")
    _, storage_type, key, _location, numel = pid
    if not isinstance(storage_type, _Global) or not isinstance(key, str):
        raise NotACheckpointError(f"malformed storage id {_brief(pid)}")
    if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
        raise NotACheckpointError(f"storage {key!r}: bad element count {_brief(numel)}")
    type_name = storage_type.name
    if type_name == "torch.storage.UntypedStorage":
        dtype = "uint8"
    else:
        short = type_name.removeprefix("torch.")
        if short not in _STORAGE_DTYPES:
            raise UnsafePickleError(f"storage type {type_name!r} is not a storage")
        dtype = _STORAGE_DTYPES[short]
    return StorageRef(key=key, dtype=dtype, numel=numel)


def rebuild_tensor(name: str, args: tuple[object, ...]) -> TensorRef:
    """The tensor a call of rebuild function ``name`` describes, checked to lie in its storage."""
    if name == "torch._utils._rebuild_tensor_v3":
        if len(args) < 7:
            raise NotACheckpointError("_rebuild_tensor_v3 with too few arguments")
        storage, offset, shape, stride = args[:4]
        dtype_global = args[6]
        if not isinstance(dtype_global, _Global):
            raise NotACheckpointError("_rebuild_tensor_v3 without a dtype")
        short = dtype_global.name.removeprefix("torch.")
        dtype = _DTYPE_ALIASES.get(short, short)
        if dtype not in DTYPE_ITEMSIZE:
            raise UnsafePickleError(f"unknown tensor dtype {dtype_global.name!r}")
    else:
        if len(args) < 4:
            raise NotACheckpointError(f"{name} with too few arguments")
        storage, offset, shape, stride = args[:4]
        dtype = storage.dtype if isinstance(storage, StorageRef) else ""
    if not isinstance(storage, StorageRef):
        raise NotACheckpointError(f"{name} without a storage")
    shape_t = _int_tuple(shape, "shape")
    stride_t = _int_tuple(stride, "stride")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise NotACheckpointError(f"tensor storage offset {_brief(offset)} is invalid")
    if len(shape_t) != len(stride_t) or len(shape_t) > MAX_DIMS:
        raise NotACheckpointError("tensor shape and stride disagree")
    tensor = TensorRef(storage=storage, dtype=dtype, offset=offset, shape=shape_t, stride=stride_t)
    _check_in_bounds(tensor)
    return tensor


def _check_in_bounds(t: TensorRef) -> None:
    """A view must lie inside its storage: nothing outside the record is ever addressed."""
    itemsize = DTYPE_ITEMSIZE[t.dtype]
    if t.numel == 0:
        return
    if any(s < 0 for s in t.stride):
        raise NotACheckpointError("negative tensor strides are not valid in a checkpoint")
    last = t.offset + sum((d - 1) * s for d, s in zip(t.shape, t.stride, strict=True))
    if (last + 1) * itemsize > t.storage.nbytes:
        raise NotACheckpointError(
            f"tensor view reaches element {last} beyond storage {t.storage.key!r} "
            f"({t.storage.nbytes} bytes)"
        )


def _int_tuple(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise NotACheckpointError(f"tensor {what} {_brief(value)} is not a tuple of ints")
    if what == "shape" and any(v < 0 for v in value):
        raise NotACheckpointError(f"negative tensor {what} {_brief(value)}")
    return tuple(value)


_BRIEF = reprlib.Repr()


_BRIEF.maxlevel, _BRIEF.maxtuple, _BRIEF.maxlist, _BRIEF.maxstring = 3, 6, 6, 60


def _brief(value: object) -> str:
    """A bounded ``repr`` of an untrusted value, for error messages."""
    return _BRIEF.repr(value)


__all__ = ["StorageRef", "TensorRef", "rebuild_tensor", "storage_ref"]
