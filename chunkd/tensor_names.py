"""Name the tensors of a scanned ``data.pkl``: paths in the object tree, unique, in O(1) each.

A tensor's name is its path in the checkpoint (``model.fc.weight``); a storage is named after
the first tensor that uses it (docs/SPEC.md "The flat index and chunks"). Names are unique so that a
chunk's ``parts`` never merges two storages, and nested keys can spell the same dotted path
many times (``{"a.b": t1, "a": {"b": t2}}``): the second becomes ``a.b~1``. Both the walk and the
naming are linear in the tree and bounded by the reader's budget (:mod:`chunkd.pickle_scan`).
"""

from __future__ import annotations

from dataclasses import dataclass

from chunkd.errors import NotACheckpointError
from chunkd.pickle_scan import (
    DTYPE_ITEMSIZE,
    MAX_DEPTH,
    MAX_NAME_CHARS,
    MAX_TENSORS,
    ScannedPickle,
    StorageRef,
    TensorRef,
    over_budget,
)


@dataclass(frozen=True, slots=True)
class NamedStorage:
    """A storage in checkpoint order, with the name of the first tensor that uses it."""

    name: str
    storage: StorageRef
    dtype: str
    #: the first tensor's shape when it covers its storage exactly, else ``(numel,)``
    shape: tuple[int, ...]

    @property
    def itemsize(self) -> int:
        return DTYPE_ITEMSIZE[self.dtype]

    @property
    def numel(self) -> int:
        return self.storage.nbytes // self.itemsize


class UniqueNames:
    """Hands out ``name``, or ``name~1``, ``name~2``, ... if taken: the first free one.

    O(1) amortized per name: each base name remembers the next suffix to try, and a suffix is
    only ever skipped because that exact name is taken (names are never given back), so every
    name is skipped at most once for its base. The old linear probe from ``~1`` made
    thousands of tensors that spell the same dotted path quadratic (issue 9). The names are
    the same as the probe's, so stored rounds keep their tensor names.
    """

    __slots__ = ("_next", "_used")

    def __init__(self) -> None:
        self._used: set[str] = set()
        self._next: dict[str, int] = {}

    def take(self, name: str) -> str:
        if len(name) > MAX_NAME_CHARS:
            raise over_budget("characters in one tensor's path", MAX_NAME_CHARS)
        candidate = name
        if candidate in self._used:
            n = self._next.get(name, 1)
            candidate = f"{name}~{n}"
            while candidate in self._used:
                n += 1
                candidate = f"{name}~{n}"
            self._next[name] = n + 1
        self._used.add(candidate)
        return candidate


def walk_tensors(root: object) -> list[tuple[str, TensorRef]]:
    """Every tensor in the tree with its path (``model.fc.weight``), depth first, in order.

    Paths are unique: ``{"a.b": t1, "a": {"b": t2}}`` names the second ``a.b~1``, so that no
    tensor is silently merged with another under one name.
    """
    found: list[tuple[str, TensorRef]] = []
    seen_containers: set[int] = set()
    names = UniqueNames()

    def visit(obj: object, path: str, depth: int) -> None:
        if isinstance(obj, TensorRef):
            if len(found) >= MAX_TENSORS:  # one tensor may be referenced from many places
                raise over_budget("tensor paths", MAX_TENSORS)
            found.append((names.take(path), obj))
            return
        if isinstance(obj, (dict, list, tuple)):
            if id(obj) in seen_containers:  # shared containers via memo: visit once
                return
            if depth >= MAX_DEPTH:
                raise NotACheckpointError(f"data.pkl nests containers more than {MAX_DEPTH} deep")
            seen_containers.add(id(obj))
            items = obj.items() if isinstance(obj, dict) else enumerate(obj)
            for key, value in items:
                if len(path) > MAX_NAME_CHARS:  # deep paths of long keys: stop before growing
                    raise over_budget("characters in one tensor's path", MAX_NAME_CHARS)
                visit(value, f"{path}.{key}" if path else str(key), depth + 1)

    visit(root, "", 0)
    return found


def name_storages(scanned: ScannedPickle) -> list[NamedStorage]:
    """The flat index's storage order: first use in checkpoint order, then any unnamed storage.

    A storage shared by several tensors (tied weights, views) appears once, named after the
    first tensor; its element type is that tensor's dtype (an untyped storage is bytes until a
    tensor gives it one). Names are made unique so a chunk's ``parts`` never merges two storages.
    """
    result: list[NamedStorage] = []
    by_key: dict[str, NamedStorage] = {}
    used_names = UniqueNames()

    for path, tensor in walk_tensors(scanned.root):
        key = tensor.storage.key
        if key in by_key:
            continue
        dtype = tensor.dtype
        itemsize = DTYPE_ITEMSIZE[dtype]
        nbytes = tensor.storage.nbytes
        if nbytes % itemsize:
            dtype, itemsize = "uint8", 1
        numel = nbytes // itemsize
        covers = (
            tensor.offset == 0
            and tensor.numel == numel
            and tensor.dtype == dtype
            and is_contiguous(tensor.shape, tensor.stride)
        )
        named = NamedStorage(
            name=used_names.take(path or "tensor"),
            storage=tensor.storage,
            dtype=dtype,
            shape=tensor.shape if covers else (numel,),
        )
        by_key[key] = named
        result.append(named)
    for key, storage in scanned.storages.items():
        if key not in by_key:
            named = NamedStorage(
                name=used_names.take(f"_storage.{key}"),
                storage=storage,
                dtype=storage.dtype,
                shape=(storage.numel,),
            )
            by_key[key] = named
            result.append(named)
    return result


def is_contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """A C-contiguous layout (size-1 dimensions may have any stride)."""
    expected = 1
    for dim, st in zip(reversed(shape), reversed(stride), strict=True):
        if dim != 1 and st != expected:
            return False
        expected *= dim
    return True
