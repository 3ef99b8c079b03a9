"""The pickle reader's rules: what ``data.pkl`` may name, and how much work it may ask for.

Pure tables and checks, used by :mod:`chunkd.pickle_scan`'s stack machine: the budget (sized to
real checkpoints with a wide margin), the dtypes torch saves, and the allow-list of globals. A
global outside the list raises :class:`~chunkd.errors.UnsafePickleError`; nothing is imported.
"""

from __future__ import annotations

from chunkd.errors import NotACheckpointError, UnsafePickleError

#: data.pkl of a real checkpoint is kilobytes to a few MiB.
MAX_PICKLE_BYTES = 64 << 20
#: Opcodes interpreted (every opcode is O(1) except those that build from a mark).
MAX_OPS = 5_000_000
#: Tensors built (``_rebuild_tensor*``) and tensor paths found while naming them; each tensor
#: also costs ~6 containers (its argument, shape and stride tuples, ...).
MAX_TENSORS = 50_000
#: Containers built (dicts, lists, tuples, sets, and the list each MARK opens): each costs
#: ~60-200 bytes of memory.
MAX_CONTAINERS = 500_000
#: Values pushed (scalars, strings, containers, tensors): bounds the stack and the tree.
MAX_OBJECTS = 3_000_000
#: Memo entries (PUT/MEMOIZE): each keeps its object alive until the end.
MAX_MEMO = 1_000_000
#: Characters of one tensor's path (``model.layer.0.weight``); real ones are < 200.
MAX_NAME_CHARS = 4096
MAX_DIMS = 64
#: Containers nested deeper than this are refused: walking them would exhaust Python's stack.
MAX_DEPTH = 256
#: dtype name -> element size in bytes, for every dtype torch can save.
DTYPE_ITEMSIZE: dict[str, int] = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "complex128": 16,
    "complex64": 8,
    "complex32": 4,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint64": 8,
    "uint32": 4,
    "uint16": 2,
    "uint8": 1,
    "bool": 1,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "float8_e4m3fnuz": 1,
    "float8_e5m2fnuz": 1,
    "float8_e8m0fnu": 1,
}


#: torch's typed storage classes (module ``torch``) -> the dtype of their elements.
_STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}


#: dtype aliases torch uses as global names (``torch.float`` pickles as ``torch float32``).
_DTYPE_ALIASES = {
    "float": "float32",
    "double": "float64",
    "half": "float16",
    "long": "int64",
    "int": "int32",
    "short": "int16",
    "cfloat": "complex64",
    "cdouble": "complex128",
    "chalf": "complex32",
}


class PickleBudgetError(NotACheckpointError):
    """data.pkl asks for more work than any real checkpoint needs (see the budget above)."""


def over_budget(what: str, limit: int) -> PickleBudgetError:
    return PickleBudgetError(
        f"data.pkl exceeds the reader's budget: more than {limit:,} {what} (real checkpoints "
        "need far fewer); refused without reading further"
    )


class _Global:
    """An allow-listed global, resolved to a marker; calling it is interpreted, never executed."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<global {self.name}>"


_TENSOR_REBUILDERS = {
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor_v3",
}


_PARAMETER_REBUILDERS = {
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
}


_CONTAINER_GLOBALS = {
    "collections.OrderedDict",
    "builtins.set",
    "builtins.frozenset",
    "builtins.complex",
    "builtins.slice",
    "torch.Size",
    "torch.device",
    "_codecs.encode",
}


#: Opcodes that push a new value (charged against MAX_OBJECTS); REDUCE may build a container.
_PUSHING_OPS = frozenset(
    {
        "BININT", "BININT1", "BININT2", "LONG1", "LONG4", "INT", "LONG", "BINFLOAT", "FLOAT",
        "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
        "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "NONE", "NEWTRUE",
        "NEWFALSE", "EMPTY_DICT", "EMPTY_LIST", "EMPTY_TUPLE", "EMPTY_SET", "TUPLE", "TUPLE1",
        "TUPLE2", "TUPLE3", "LIST", "DICT", "FROZENSET", "GLOBAL", "STACK_GLOBAL", "BINPERSID",
        "REDUCE", "MARK",
    }
)  # fmt: skip


#: Opcodes that build a container (charged against MAX_CONTAINERS too).
_CONTAINER_OPS = frozenset(
    {
        "EMPTY_DICT", "EMPTY_LIST", "EMPTY_TUPLE", "EMPTY_SET", "TUPLE", "TUPLE1", "TUPLE2",
        "TUPLE3", "LIST", "DICT", "FROZENSET", "REDUCE", "MARK",
    }
)  # fmt: skip


def _allowed_global(module: str, name: str) -> _Global:
    if module == "__builtin__":  # protocol 2 (torch.save's default) names builtins the Py2 way
        module = "builtins"
    full = f"{module}.{name}"
    if full in _TENSOR_REBUILDERS or full in _PARAMETER_REBUILDERS or full in _CONTAINER_GLOBALS:
        return _Global(full)
    if module == "torch" and name in _STORAGE_DTYPES:
        return _Global(full)
    if full == "torch.storage.UntypedStorage":
        return _Global(full)
    if module == "torch" and (name in DTYPE_ITEMSIZE or name in _DTYPE_ALIASES):
        return _Global(full)
    raise UnsafePickleError(
        f"data.pkl references the global {full!r}, which is not allowed in a checkpoint; "
        "it was not imported or executed"
    )
