"""Read the tensors of ``data.pkl`` without executing it.

``torch.save`` pickles the checkpoint object with tensors replaced by calls to torch's rebuild
functions and storages replaced by persistent ids ``('storage', StorageType, key, location,
numel)``. Unpickling the file with :mod:`pickle` would run whatever globals it names, so this module
never does: it walks the opcode stream (:func:`pickletools.genops` only decodes, it calls nothing)
with a small stack machine that understands the containers and scalars a checkpoint holds and a
short allow-list of globals. A global outside the allow-list, or an opcode that builds arbitrary
objects, raises :class:`~chunkd.errors.UnsafePickleError` naming it. Nothing is ever imported.

The result is the checkpoint's object tree with each tensor as a :class:`TensorRef` (name, dtype,
shape, stride, storage key, offset) and each storage as a :class:`StorageRef`, which is everything
chunking, rounds and export need; :mod:`chunkd.tensor_refs` builds and bounds-checks those two
(they are re-exported here), :mod:`chunkd.tensor_names` names them.
"""

from __future__ import annotations

import pickletools
from collections.abc import Iterator
from dataclasses import dataclass, field

from chunkd.errors import NotACheckpointError, UnsafePickleError
from chunkd.pickle_rules import (
    _CONTAINER_OPS,
    _PARAMETER_REBUILDERS,
    _PUSHING_OPS,
    _TENSOR_REBUILDERS,
    DTYPE_ITEMSIZE,
    MAX_CONTAINERS,
    MAX_DEPTH,
    MAX_DIMS,
    MAX_MEMO,
    MAX_NAME_CHARS,
    MAX_OBJECTS,
    MAX_OPS,
    MAX_PICKLE_BYTES,
    MAX_TENSORS,
    PickleBudgetError,
    _allowed_global,
    _Global,
    over_budget,
)
from chunkd.tensor_refs import StorageRef, TensorRef, rebuild_tensor, storage_ref


@dataclass(slots=True)
class ScannedPickle:
    """What :func:`scan_pickle` learned: the object tree and every storage, in first-use order."""

    root: object
    storages: dict[str, StorageRef] = field(default_factory=dict)


class _Mark:
    __slots__ = ()


_MARK = _Mark()


class _OrderedDictMarker:
    """``collections.OrderedDict`` called with no arguments: becomes a plain ``dict``."""


def scan_pickle(data: bytes) -> ScannedPickle:
    """Interpret ``data`` (the bytes of ``data.pkl``) and return its object tree.

    Raises :class:`UnsafePickleError` for disallowed globals and object-building opcodes, and
    :class:`NotACheckpointError` for a malformed stream.
    """
    if len(data) > MAX_PICKLE_BYTES:
        raise PickleBudgetError(
            f"data.pkl is {len(data):,} bytes, more than the reader's budget of "
            f"{MAX_PICKLE_BYTES:,} (real checkpoints: kilobytes to a few MiB)"
        )
    machine = _Machine()
    try:
        for count, (op, arg, _pos) in enumerate(_genops(data)):
            if count >= MAX_OPS:
                raise over_budget("opcodes", MAX_OPS)
            if machine.step(op.name, arg):
                return ScannedPickle(root=machine.result, storages=machine.storages)
    except (UnsafePickleError, NotACheckpointError):
        raise
    except (ValueError, IndexError, KeyError, TypeError, OverflowError, RecursionError) as e:
        raise NotACheckpointError(f"data.pkl is not a valid checkpoint pickle: {e}") from None
    raise NotACheckpointError("data.pkl ends without a STOP opcode")


def _genops(data: bytes) -> Iterator[tuple[pickletools.OpcodeInfo, object, int | None]]:
    try:
        yield from pickletools.genops(data)
    except ValueError as e:
        raise NotACheckpointError(f"data.pkl is not a valid pickle: {e}") from None


class _Machine:
    """The pickle virtual machine, reduced to what checkpoints use and made inert."""

    def __init__(self) -> None:
        self.stack: list[object] = []
        self.metastack: list[list[object]] = []
        self.memo: dict[int, object] = {}
        self.storages: dict[str, StorageRef] = {}
        self.result: object = None
        # the budget spent so far (see MAX_* above)
        self.objects = 0
        self.containers = 0
        self.tensors = 0

    def _spend(self, name: str) -> None:
        """Charge one opcode's new value against the budget, before it is built."""
        self.objects += 1
        if self.objects > MAX_OBJECTS:
            raise over_budget("values", MAX_OBJECTS)
        if name in _CONTAINER_OPS:
            self.containers += 1
            if self.containers > MAX_CONTAINERS:
                raise over_budget("containers", MAX_CONTAINERS)

    # -- stack helpers -------------------------------------------------------------------------
    def _pop_mark(self) -> list[object]:
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    def step(self, name: str, arg: object) -> bool:
        stack = self.stack
        if name in ("PROTO", "FRAME"):
            return False
        if name in _PUSHING_OPS:
            self._spend(name)
        if name == "STOP":
            self.result = stack.pop()
            return True
        if name == "MARK":
            self.metastack.append(stack)
            self.stack = []
            return False
        if name in (
            "BININT",
            "BININT1",
            "BININT2",
            "LONG1",
            "LONG4",
            "INT",
            "LONG",
            "BINFLOAT",
            "FLOAT",
            "BINUNICODE",
            "SHORT_BINUNICODE",
            "BINUNICODE8",
            "UNICODE",
            "STRING",
            "BINSTRING",
            "SHORT_BINSTRING",
            "BINBYTES",
            "SHORT_BINBYTES",
            "BINBYTES8",
        ):
            stack.append(arg)
            return False
        if name == "NONE":
            stack.append(None)
        elif name == "NEWTRUE":
            stack.append(True)
        elif name == "NEWFALSE":
            stack.append(False)
        elif name == "EMPTY_DICT":
            stack.append({})
        elif name == "EMPTY_LIST":
            stack.append([])
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name == "EMPTY_SET":
            stack.append(set())
        elif name == "TUPLE":
            items = self._pop_mark()
            self.stack.append(tuple(items))
        elif name == "TUPLE1":
            stack[-1:] = [(stack[-1],)]
        elif name == "TUPLE2":
            stack[-2:] = [(stack[-2], stack[-1])]
        elif name == "TUPLE3":
            stack[-3:] = [(stack[-3], stack[-2], stack[-1])]
        elif name == "LIST":
            items = self._pop_mark()
            self.stack.append(items)
        elif name == "DICT":
            items = self._pop_mark()
            self.stack.append(_pairs_to_dict(items))
        elif name == "APPEND":
            value = stack.pop()
            _as_list(stack[-1]).append(value)
        elif name == "APPENDS":
            items = self._pop_mark()
            _as_list(self.stack[-1]).extend(items)
        elif name == "SETITEM":
            value = stack.pop()
            key = stack.pop()
            _as_dict(stack[-1])[_hashable(key)] = value
        elif name == "SETITEMS":
            items = self._pop_mark()
            _as_dict(self.stack[-1]).update(_pairs_to_dict(items))
        elif name == "ADDITEMS":
            items = self._pop_mark()
            target = self.stack[-1]
            if not isinstance(target, set):
                raise NotACheckpointError("ADDITEMS on something that is not a set")
            target.update(_hashable(i) for i in items)
        elif name == "FROZENSET":
            items = self._pop_mark()
            self.stack.append(frozenset(_hashable(i) for i in items))
        elif name == "POP":
            stack.pop()
        elif name == "POP_MARK":
            self._pop_mark()
        elif name == "DUP":
            stack.append(stack[-1])
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            self._memoize(int(arg), stack[-1])  # type: ignore[arg-type]
        elif name == "MEMOIZE":
            self._memoize(len(self.memo), stack[-1])
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(self.memo[int(arg)])  # type: ignore[arg-type]
        elif name == "GLOBAL":
            module, _, attr = str(arg).partition(" ")
            stack.append(_allowed_global(module, attr))
        elif name == "STACK_GLOBAL":
            attr = stack.pop()
            module = stack.pop()
            if not isinstance(module, str) or not isinstance(attr, str):
                raise NotACheckpointError("STACK_GLOBAL with non-string names")
            stack.append(_allowed_global(module, attr))
        elif name == "BINPERSID":
            pid = stack.pop()
            stack.append(self._persistent_load(pid))
        elif name == "REDUCE":
            args = stack.pop()
            func = stack.pop()
            stack.append(self._call(func, args))
        elif name == "BUILD":
            state = stack.pop()
            target = stack[-1]
            # torch state_dicts carry ``_metadata`` (the module versions) as instance state of
            # their OrderedDict; that is not tensor data, so it is dropped. Any other object
            # getting state would be arbitrary object construction.
            if not isinstance(target, dict):
                raise UnsafePickleError(f"BUILD on {type(target).__name__} is not allowed")
            del state
        else:
            raise UnsafePickleError(f"pickle opcode {name} is not allowed in a checkpoint")
        return False

    def _memoize(self, index: int, value: object) -> None:
        if index not in self.memo and len(self.memo) >= MAX_MEMO:
            raise over_budget("memo entries", MAX_MEMO)
        self.memo[index] = value

    def _persistent_load(self, pid: object) -> StorageRef:
        ref = storage_ref(pid)
        existing = self.storages.get(ref.key)
        if existing is not None:
            if existing.nbytes != ref.nbytes:
                raise NotACheckpointError(f"storage {ref.key!r} declared with two sizes")
            return existing
        self.storages[ref.key] = ref
        return ref

    def _call(self, func: object, args: object) -> object:
        if not isinstance(func, _Global):
            raise UnsafePickleError(f"REDUCE on {type(func).__name__} is not allowed")
        if not isinstance(args, tuple):
            raise NotACheckpointError(f"REDUCE arguments for {func.name} are not a tuple")
        name = func.name
        if name in _TENSOR_REBUILDERS:
            self.tensors += 1
            if self.tensors > MAX_TENSORS:
                raise over_budget("tensors", MAX_TENSORS)
            return rebuild_tensor(name, args)
        if name in _PARAMETER_REBUILDERS:
            if not args or not isinstance(args[0], TensorRef):
                raise NotACheckpointError(f"{name} without a tensor")
            return args[0]
        if name == "collections.OrderedDict":
            if args:
                return _pairs_to_dict([x for pair in _as_list(list(args[0])) for x in pair])
            return {}
        if name in ("builtins.set", "builtins.frozenset"):
            items = [_hashable(i) for i in (args[0] if args else ())]  # type: ignore[union-attr]
            return set(items) if name == "builtins.set" else frozenset(items)
        if name == "builtins.complex":
            return complex(*[a for a in args if isinstance(a, (int, float))])
        if name in ("torch.Size", "builtins.slice"):
            return tuple(args[0]) if args and isinstance(args[0], (tuple, list)) else tuple(args)
        if name == "torch.device":
            return ":".join(str(a) for a in args)
        if name == "_codecs.encode":
            # protocol 2 pickles bytes as _codecs.encode(str, 'latin1')
            if len(args) == 2 and isinstance(args[0], str) and args[1] == "latin1":
                return args[0].encode("latin1")
            raise UnsafePickleError("_codecs.encode with unexpected arguments")
        raise UnsafePickleError(f"calling {name} is not allowed")


def _as_list(obj: object) -> list[object]:
    if not isinstance(obj, list):
        raise NotACheckpointError(f"APPEND on {type(obj).__name__}")
    return obj


def _as_dict(obj: object) -> dict[object, object]:
    if not isinstance(obj, dict):
        raise NotACheckpointError(f"SETITEM on {type(obj).__name__}")
    return obj


#: Elements a dict key or set item may expand to. Shared tuples make a DAG whose expansion
#: (what ``hash`` and ``repr`` walk) grows exponentially with its size: a 100-byte pickle can
#: describe a key that would take longer than the universe to hash.
MAX_KEY_ELEMENTS = 10_000


def _hashable(key: object) -> object:
    if isinstance(key, (list, dict, set)):
        raise NotACheckpointError(f"unhashable {type(key).__name__} used as a key")
    if isinstance(key, (tuple, frozenset)) and _expanded_size(key, {}) > MAX_KEY_ELEMENTS:
        raise NotACheckpointError(
            f"a dict key or set item expands to more than {MAX_KEY_ELEMENTS} elements"
        )
    return key


def _expanded_size(obj: object, memo: dict[int, int]) -> int:
    """How many elements ``obj`` has once shared sub-tuples are counted each time they occur;
    linear in the number of *distinct* tuples, and stops counting past the bound."""
    if not isinstance(obj, (tuple, frozenset)):
        return 1
    known = memo.get(id(obj))
    if known is not None:
        return known
    total = 1
    for item in obj:
        total += _expanded_size(item, memo)
        if total > MAX_KEY_ELEMENTS:
            break
    memo[id(obj)] = total
    return total


def _pairs_to_dict(items: list[object]) -> dict[object, object]:
    if len(items) % 2:
        raise NotACheckpointError("odd number of items for a dict")
    return {_hashable(items[i]): items[i + 1] for i in range(0, len(items), 2)}


__all__ = [
    "DTYPE_ITEMSIZE",
    "MAX_CONTAINERS",
    "MAX_DEPTH",
    "MAX_DIMS",
    "MAX_MEMO",
    "MAX_NAME_CHARS",
    "MAX_OBJECTS",
    "MAX_OPS",
    "MAX_PICKLE_BYTES",
    "MAX_TENSORS",
    "PickleBudgetError",
    "ScannedPickle",
    "StorageRef",
    "TensorRef",
    "over_budget",
    "scan_pickle",
]
