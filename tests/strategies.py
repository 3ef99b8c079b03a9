"""Random checkpoints and hand-built (crafted) checkpoint files, shared by every test.

Like attrs' ``tests/strategies.py``: one module feeds the property tests. Besides the Hypothesis
strategies it holds the pure builders the tests share: how SPEC.md names a tensor
(:func:`named_tensors`), a tensor's raw bytes (:func:`tensor_bytes`), ``torch.save`` to a path or a
buffer (:func:`save_checkpoint`), and byte-level builders for files ``torch.save`` would never
write (crafted pickles, zips with chosen headers), used by the bad-input and parser tests.

Examples stay small (well under 64 KiB) so that the suite is fast. Tensor contents are random bit
patterns (``torch.frombuffer`` over random bytes), so float NaNs carry random payloads: a restore
that goes through float arithmetic anywhere would lose them.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import struct
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hypothesis import strategies as st

# -- dtypes --------------------------------------------------------------------------------------

#: dtypes with a typed storage class: pickled through ``_rebuild_tensor_v2``.
V2_DTYPES: tuple[torch.dtype, ...] = (
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint8,
    torch.bool,
    torch.complex64,
    torch.complex128,  # 16-byte elements: the widest a chunk must hold
)
#: dtypes without one: torch pickles an UntypedStorage and ``_rebuild_tensor_v3`` with the dtype.
V3_DTYPES: tuple[torch.dtype, ...] = (torch.uint16, torch.float8_e4m3fn)
ALL_DTYPES = V2_DTYPES + V3_DTYPES


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"`` (the names chunkd uses)."""
    return str(dtype).removeprefix("torch.")


def itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


# -- tensors -------------------------------------------------------------------------------------


def random_tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """A tensor of ``shape`` whose bytes are random (bools are 0/1, the only valid bool bytes)."""
    numel = math.prod(shape)
    if numel == 0:
        return torch.empty(shape, dtype=dtype)
    raw = np.random.default_rng(seed).bytes(numel * itemsize(dtype))
    if dtype == torch.bool:
        raw = bytes(b & 1 for b in raw)
    return torch.frombuffer(bytearray(raw), dtype=dtype).reshape(shape).clone()


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The raw bytes of ``t``'s elements in row-major order (0-dim and empty tensors included)."""
    dense = torch.empty(t.shape, dtype=t.dtype)  # row-major strides, whatever ``t`` has
    dense.copy_(t.detach())
    return dense.reshape(-1).view(torch.uint8).numpy().tobytes()


seeds = st.integers(min_value=0, max_value=2**32 - 1)

#: small shapes: 0-dim, empty dimensions, up to 3 dimensions
small_shapes = st.one_of(
    st.just(()),
    st.lists(st.integers(0, 5), min_size=1, max_size=3).map(tuple),
)
#: a few larger 1-D shapes, so chunk boundaries fall inside tensors
large_shapes = st.integers(100, 1024).map(lambda n: (n,))


@st.composite
def tensors(draw: st.DrawFn, dtypes: tuple[torch.dtype, ...] = ALL_DTYPES) -> torch.Tensor:
    dtype = draw(st.sampled_from(dtypes))
    shape = draw(st.one_of(small_shapes, small_shapes, large_shapes))
    t = random_tensor(dtype, shape, draw(seeds))
    if t.is_floating_point() and draw(st.integers(0, 4)) == 0:
        return torch.nn.Parameter(t, requires_grad=False)
    return t


@st.composite
def shared_storage_tensors(draw: st.DrawFn) -> list[tuple[str, torch.Tensor]]:
    """Tensors that share one storage: tied weights and views (slices, transposes, offsets).

    The base tensor itself is not always among them, so the storage may be covered by no tensor
    exactly (then its ``shape`` in the chunk descriptors is ``[numel]``).
    """
    dtype = draw(st.sampled_from(ALL_DTYPES))
    rows, cols = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    base = random_tensor(dtype, (rows, cols), draw(seeds))
    flat = base.view(-1)
    k = draw(st.integers(0, rows * cols - 1))
    candidates: dict[str, torch.Tensor] = {
        "base": base,
        "tied": base,
        "transposed": base.t(),
        "last_row": base[rows - 1],
        "tail": flat[k:],
        "flat": flat,
        "cols": base[:, cols // 2 :],
        "strided": flat[k::2],
        "broadcast": base[0].expand(rows, cols),  # stride 0
    }
    names = draw(st.lists(st.sampled_from(sorted(candidates)), min_size=1, max_size=5, unique=True))
    return [(name, candidates[name]) for name in names]


plain_values = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.none(),
    st.booleans(),
)
#: dict keys without dots, so that no two paths name the same tensor
keys = st.text(alphabet="abcdefxyz_019", min_size=1, max_size=6)


def containers(leaves: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    """Nested dicts, lists and tuples of ``leaves``."""
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.dictionaries(keys, children, max_size=4),
            st.lists(children, max_size=4),
            st.lists(children, max_size=3).map(tuple),
        ),
        max_leaves=10,
    )


@st.composite
def state_dicts(draw: st.DrawFn) -> collections.OrderedDict[str, torch.Tensor]:
    """A flat ``{dotted.name: tensor}`` OrderedDict with ``_metadata`` as ``state_dict()`` makes."""
    sd: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()
    for i, t in enumerate(draw(st.lists(tensors(), max_size=6))):
        sd[f"layer{i}.weight"] = t
    if draw(st.booleans()):
        for name, t in draw(shared_storage_tensors()):
            sd[f"shared.{name}"] = t
    sd._metadata = {"": {"version": 1}}  # type: ignore[attr-defined]
    return sd


@st.composite
def checkpoints(draw: st.DrawFn) -> object:
    """What a client may ``torch.save``: a state_dict, a wrapper, any nesting, a bare tensor."""
    kind = draw(st.sampled_from(["state_dict", "federatedscope", "nested", "tensor"]))
    if kind == "state_dict":
        return draw(state_dicts())
    if kind == "federatedscope":
        return {"cur_round": draw(st.integers(0, 1000)), "model": draw(state_dicts())}
    if kind == "tensor":
        return draw(tensors())
    tree = draw(st.dictionaries(keys, containers(st.one_of(tensors(), plain_values)), max_size=4))
    if draw(st.booleans()):
        tree["shared"] = dict(draw(shared_storage_tensors()))
    return tree


# -- what a checkpoint holds, as SPEC.md names it --------------------------------------------------


def named_tensors(obj: object, path: str = "") -> dict[str, torch.Tensor]:
    """Every tensor with its path in the checkpoint (``model.fc.weight``; list items by index)."""
    found: dict[str, torch.Tensor] = {}
    if isinstance(obj, torch.Tensor):
        found[path] = obj
    elif isinstance(obj, (Mapping, list, tuple)):
        items = obj.items() if isinstance(obj, Mapping) else enumerate(obj)
        for key, value in items:
            found.update(named_tensors(value, f"{path}.{key}" if path else str(key)))
    return found


def nonempty_storages(obj: object) -> list[tuple[str, torch.Tensor]]:
    """The flat index's non-empty storages in checkpoint order, each with its first tensor."""
    seen: set[int] = set()
    out = []
    for name, t in named_tensors(obj).items():
        storage = t.untyped_storage()
        if storage.nbytes() and storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            out.append((name, t))
    return out


def save_checkpoint(
    obj: object, path: Path, *, to_buffer: bool = False, protocol: int = 2
) -> bytes:
    """``torch.save`` to ``path`` (top folder = stem) or via a buffer (top = ``archive``)."""
    if to_buffer:
        buf = io.BytesIO()
        torch.save(obj, buf, pickle_protocol=protocol)
        path.write_bytes(buf.getvalue())
    else:
        torch.save(obj, path, pickle_protocol=protocol, _use_new_zipfile_serialization=True)
    return path.read_bytes()


def small_cnn_state(steps: int = 2, seed: int = 0) -> collections.OrderedDict[str, torch.Tensor]:
    """A CNN with BatchNorm, trained ``steps`` steps so its running stats are non-trivial."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 6 * 6, 10),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.state_dict()


# -- crafted pickles: what torch.save would write, or would never write ------------------------


@dataclass(frozen=True)
class StorageId:
    """Pickles as the persistent id ``('storage', storage_type, key, 'cpu', numel)``."""

    key: str
    numel: int
    storage_type: object = torch.FloatStorage


class RebuildTensor:
    """Pickles as ``torch._utils._rebuild_tensor_v2(storage, offset, shape, stride, ...)``."""

    def __init__(
        self, storage: StorageId, offset: int, shape: tuple[int, ...], stride: tuple[int, ...]
    ) -> None:
        self.args = (storage, offset, shape, stride, False, collections.OrderedDict())

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (torch._utils._rebuild_tensor_v2, self.args)


class Reduce:
    """Pickles as ``func(*args)`` (GLOBAL + REDUCE); unpickling it would call ``func``."""

    def __init__(self, func: object, *args: object) -> None:
        self.func = func
        self.args = args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (self.func, self.args)


class _StoragePickler(pickle.Pickler):
    def persistent_id(self, obj: object) -> object:
        if isinstance(obj, StorageId):
            return ("storage", obj.storage_type, obj.key, "cpu", obj.numel)
        return None


def dump_pickle(obj: object, protocol: int = 2) -> bytes:
    """Pickle ``obj`` the way torch.save does (storages as persistent ids)."""
    buf = io.BytesIO()
    _StoragePickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


def zip_members(members: Mapping[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    """A zip of ``members`` (full names) with correct CRCs, written by :mod:`zipfile`."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = compression
            zf.writestr(info, data)
    return buf.getvalue()


def read_members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def replace_members(
    data: bytes,
    replacements: Mapping[str, bytes],
    compression: int = zipfile.ZIP_STORED,
) -> bytes:
    """The zip ``data`` rewritten with some members' bytes replaced (matched by name suffix)."""
    members = read_members(data)
    for name in members:
        for suffix, new in replacements.items():
            if name.endswith(suffix):
                members[name] = new
    return zip_members(members, compression)


def crafted_checkpoint(
    obj: object, storages: Mapping[str, bytes], *, top: str = "archive", protocol: int = 2
) -> bytes:
    """A checkpoint zip built by hand: ``data.pkl`` = ``obj`` pickled, one record per storage."""
    members = {
        f"{top}/data.pkl": dump_pickle(obj, protocol),
        f"{top}/byteorder": b"little",
        f"{top}/version": b"3\n",
    }
    members.update({f"{top}/data/{key}": raw for key, raw in storages.items()})
    return zip_members(members)


def payload_range(data: bytes, member_suffix: str) -> tuple[int, int]:
    """``[start, end)`` of a member's payload in the zip bytes (local header read, not guessed)."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(member_suffix))
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    start = info.header_offset + 30 + name_len + extra_len
    return start, start + info.file_size


# -- raw zip bytes with every header field chosen -------------------------------------------------


@dataclass
class RawEntry:
    """One member for :func:`build_raw_zip`; ``None`` fields get the correct value."""

    name: bytes
    data: bytes = b""
    method: int = 0
    flags: int = 0
    crc: int | None = None
    compressed_size: int | None = None
    local_name: bytes | None = None
    cd_header_offset: int | None = None
    #: False: only a central directory entry (its local header lies elsewhere, e.g. in a payload)
    write_local: bool = True
    #: the central directory's size fields (both), if not the payload's length (zip64: 0xFFFFFFFF)
    cd_size: int | None = None
    cd_extra: bytes = b""


def local_header(
    name: bytes,
    data: bytes,
    method: int = 0,
    flags: int = 0,
    crc: int | None = None,
    compressed_size: int | None = None,
) -> bytes:
    """A zip local file header for ``name`` followed by ``data``."""
    crc = zlib.crc32(data) if crc is None else crc
    csize = len(data) if compressed_size is None else compressed_size
    header = struct.pack(
        "<4sHHHHHIIIHH",
        b"PK\x03\x04",
        20,
        flags,
        method,
        0,
        0x21,
        crc,
        csize,
        len(data),
        len(name),
        0,
    )
    return header + name + data


def build_raw_zip(
    entries: list[RawEntry],
    *,
    disk: int = 0,
    comment: bytes = b"",
    zip64_eocd: bool = False,
    trailing: bytes = b"",
    entry_count: int | None = None,
    cd_offset: int | None = None,
) -> bytes:
    """A zip archive assembled field by field (STORED unless an entry says otherwise).

    ``entry_count`` and ``cd_offset`` override what the end record declares."""
    out = bytearray()
    central = bytearray()
    for e in entries:
        offset = len(out)
        crc = zlib.crc32(e.data) if e.crc is None else e.crc
        csize = len(e.data) if e.compressed_size is None else e.compressed_size
        if e.write_local:
            local_name = e.name if e.local_name is None else e.local_name
            out += local_header(local_name, e.data, e.method, e.flags, crc, csize)
        entry_offset = offset if e.cd_header_offset is None else e.cd_header_offset
        usize = len(e.data) if e.cd_size is None else e.cd_size
        csize = csize if e.cd_size is None else e.cd_size
        central += struct.pack(
            "<4sHHHHHHIIIHHHHHII",
            b"PK\x01\x02",
            20,
            20,
            e.flags,
            e.method,
            0,
            0x21,
            crc,
            csize,
            usize,
            len(e.name),
            len(e.cd_extra),
            0,
            0,
            0,
            0,
            entry_offset,
        )
        central += e.name + e.cd_extra
    cd_start = len(out) if cd_offset is None else cd_offset
    out += central
    n = len(entries) if entry_count is None else entry_count
    if zip64_eocd:
        eocd64_at = len(out)
        out += struct.pack(
            "<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, n, n, len(central), cd_start
        )
        out += struct.pack("<4sIQI", b"PK\x06\x07", 0, eocd64_at, 1)
        out += struct.pack(
            "<4sHHHHIIH",
            b"PK\x05\x06",
            0,
            0,
            0xFFFF,
            0xFFFF,
            0xFFFFFFFF,
            0xFFFFFFFF,
            len(comment),
        )
    else:
        out += struct.pack(
            "<4sHHHHIIH", b"PK\x05\x06", disk, disk, n, n, len(central), cd_start, len(comment)
        )
    return bytes(out + comment + trailing)
