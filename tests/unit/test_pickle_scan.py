"""data.pkl read without executing it: allow-listed globals only, names as SPEC.md gives them."""

from __future__ import annotations

import builtins
import collections
import io
import os
import pickle
import subprocess
import sys

import pytest
import torch
from strategies import (
    ALL_DTYPES,
    RebuildTensor,
    Reduce,
    StorageId,
    dtype_name,
    dump_pickle,
    random_tensor,
    read_members,
)

from chunkd.errors import NotACheckpointError, UnsafePickleError
from chunkd.pickle_scan import MAX_DEPTH, TensorRef, scan_pickle
from chunkd.tensor_names import name_storages, walk_tensors


def data_pkl(obj: object, protocol: int = 2) -> bytes:
    """The data.pkl ``torch.save`` writes for ``obj`` (in memory)."""
    buf = io.BytesIO()
    torch.save(obj, buf, pickle_protocol=protocol)
    return read_members(buf.getvalue())["archive/data.pkl"]


def short_unicode(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def cnn_state() -> collections.OrderedDict[str, torch.Tensor]:
    model = torch.nn.Sequential(
        collections.OrderedDict(
            conv=torch.nn.Conv2d(3, 4, 3), bn=torch.nn.BatchNorm2d(4), fc=torch.nn.Linear(4, 2)
        )
    )
    return model.state_dict()


# -- names -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_state_dict_tensors_are_named_by_their_path(protocol):
    scanned = scan_pickle(data_pkl({"cur_round": 3, "model": cnn_state()}, protocol))
    assert scanned.root["cur_round"] == 3
    named = name_storages(scanned)
    assert [n.name for n in named] == [
        "model.conv.weight",
        "model.conv.bias",
        "model.bn.weight",
        "model.bn.bias",
        "model.bn.running_mean",
        "model.bn.running_var",
        "model.bn.num_batches_tracked",
        "model.fc.weight",
        "model.fc.bias",
    ]
    by_name = {n.name: n for n in named}
    assert by_name["model.conv.weight"].shape == (4, 3, 3, 3)
    assert by_name["model.conv.weight"].dtype == "float32"
    assert by_name["model.bn.num_batches_tracked"].shape == ()
    assert by_name["model.bn.num_batches_tracked"].dtype == "int64"
    assert by_name["model.fc.weight"].numel == 8


def test_lists_and_tuples_are_named_by_index():
    obj = {"layers": [torch.zeros(2), (torch.ones(3), {"w": torch.zeros(1)})], "x": 1}
    names = [name for name, _ in walk_tensors(scan_pickle(data_pkl(obj)).root)]
    assert names == ["layers.0", "layers.1.0", "layers.1.1.w"]


def test_tied_weights_are_one_storage_named_after_the_first():
    w = random_tensor(torch.float32, (5, 4), 1)
    obj = collections.OrderedDict(
        [("encoder.weight", w), ("other", torch.zeros(3)), ("decoder.weight", w)]
    )
    scanned = scan_pickle(data_pkl(obj))
    tensors = dict(walk_tensors(scanned.root))
    assert tensors["encoder.weight"].storage == tensors["decoder.weight"].storage
    named = name_storages(scanned)
    assert [(n.name, n.shape) for n in named] == [("encoder.weight", (5, 4)), ("other", (3,))]


def test_views_share_their_storage_and_name_it_with_its_element_count():
    base = random_tensor(torch.float64, (6, 5), 2)
    obj = {"t": base.t(), "row": base[2], "base": base, "tail": base.view(-1)[7:]}
    scanned = scan_pickle(data_pkl(obj))
    tensors = dict(walk_tensors(scanned.root))
    assert tensors["t"].shape == (5, 6) and tensors["t"].stride == (1, 5)
    assert tensors["row"].offset == 10
    assert tensors["tail"].offset == 7
    assert len({t.storage for t in tensors.values()}) == 1
    [named] = name_storages(scanned)
    assert (named.name, named.shape, named.numel, named.dtype) == ("t", (30,), 30, "float64")


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=dtype_name)
@pytest.mark.parametrize("shape", [(), (0,), (3, 0), (2, 3)])
def test_every_dtype_and_shape(dtype, shape):
    t = random_tensor(dtype, shape, 3)
    scanned = scan_pickle(data_pkl({"t": t}))
    [(name, ref)] = walk_tensors(scanned.root)
    assert (name, ref.dtype, ref.shape) == ("t", dtype_name(dtype), shape)
    [named] = name_storages(scanned)
    assert named.dtype == dtype_name(dtype)
    assert named.numel == t.numel()
    assert named.storage.nbytes == t.numel() * t.element_size()


def test_plain_values_survive():
    obj = {
        "cur_round": 7,
        "lr": 0.5,
        "name": "client-3",
        "none": None,
        "flag": True,
        "big": 2**80,
        "blob": b"\x00\xff",
        "nested": [1, (2.5, "x")],
        "empty": {},
    }
    assert scan_pickle(data_pkl(obj)).root == {**obj, "nested": [1, (2.5, "x")]}


@pytest.mark.parametrize("protocol", [2, 4])
def test_sets_and_complex_values(protocol):
    """Protocol 2 (torch.save's default) names them ``__builtin__.set`` etc., as Python 2 did."""
    obj = {"s": {1, 2}, "f": frozenset({"a"}), "c": 1.5 - 2j}
    assert scan_pickle(pickle.dumps(obj, protocol=protocol)).root == obj
    assert scan_pickle(data_pkl(obj, protocol)).root == obj


def test_python2_builtin_names_are_checked_like_builtins():
    with pytest.raises(UnsafePickleError, match="eval"):
        scan_pickle(b"\x80\x02c__builtin__\neval\nX\x03\x00\x00\x001+1\x85R.")


def test_state_dict_metadata_build_is_accepted():
    sd = cnn_state()
    assert hasattr(sd, "_metadata")
    assert b"b" in data_pkl(sd)  # BUILD opcode sets _metadata
    assert set(scan_pickle(data_pkl(sd)).root) == set(sd)


def test_parameters_are_tensors():
    obj = {
        "p": torch.nn.Parameter(torch.ones(3)),
        "q": torch.nn.Parameter(torch.ones(2), requires_grad=False),
    }
    tensors = dict(walk_tensors(scan_pickle(data_pkl(obj)).root))
    assert {k: v.shape for k, v in tensors.items()} == {"p": (3,), "q": (2,)}


def test_storage_declared_but_used_by_no_named_tensor_is_still_indexed():
    scanned = scan_pickle(dump_pickle({"s": [StorageId("9", 4)]}))
    assert [n.name for n in name_storages(scanned)] == ["_storage.9"]


# -- refused: globals ------------------------------------------------------------------------------

DANGEROUS = [
    ("os", "system"),
    ("posix", "system"),
    ("nt", "system"),
    ("builtins", "eval"),
    ("builtins", "exec"),
    ("builtins", "getattr"),
    ("builtins", "__import__"),
    ("builtins", "open"),
    ("io", "open"),
    ("subprocess", "Popen"),
    ("subprocess", "call"),
    ("subprocess", "check_output"),
    ("shutil", "rmtree"),
    ("torch", "load"),
    ("torch.storage", "_load_from_bytes"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("torch._utils", "_rebuild_device_tensor_from_numpy"),
    ("__main__", "Evil"),
    ("torch.nn", "Module"),
    ("collections", "namedtuple"),
    ("builtins", "object"),
    ("chunkd_never_imported_module", "thing"),
]


@pytest.mark.parametrize(("module", "name"), DANGEROUS)
def test_global_outside_the_allow_list_is_refused(module, name):
    payload = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R."
    with pytest.raises(UnsafePickleError, match=f"{module}.{name}"):
        scan_pickle(payload)


@pytest.mark.parametrize(("module", "name"), DANGEROUS)
def test_stack_global_outside_the_allow_list_is_refused(module, name):
    payload = b"\x80\x04" + short_unicode(module) + short_unicode(name) + b"\x93)R."
    with pytest.raises(UnsafePickleError, match=f"{module}.{name}"):
        scan_pickle(payload)


def test_refused_global_is_never_imported():
    assert "chunkd_never_imported_module" not in sys.modules
    with pytest.raises(UnsafePickleError):
        scan_pickle(b"\x80\x02cchunkd_never_imported_module\nthing\n.")
    assert "chunkd_never_imported_module" not in sys.modules


@pytest.mark.parametrize(
    "evil",
    [
        Reduce(os.system, "touch /tmp/chunkd-never"),
        Reduce(builtins.eval, "1+1"),
        Reduce(builtins.open, "/tmp/chunkd-never", "w"),
        Reduce(subprocess.Popen, ["true"]),
    ],
    ids=["os.system", "eval", "open", "subprocess"],
)
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pickled_callables_are_refused(evil, protocol):
    with pytest.raises(UnsafePickleError, match="not allowed"):
        scan_pickle(pickle.dumps({"model": {}, "x": evil}, protocol=protocol))


def test_refusal_happens_before_anything_later_in_the_stream():
    """The unsafe global is refused where it appears, even after valid tensors."""
    payload = dump_pickle(
        {"w": RebuildTensor(StorageId("0", 4), 0, (4,), (1,)), "evil": Reduce(os.system, "true")}
    )
    with pytest.raises(UnsafePickleError, match="system"):
        scan_pickle(payload)


@pytest.mark.parametrize(
    "payload",
    [
        b"\x80\x02ctorch\nFloatStorage\n)R.",  # a storage class is not callable here
        b"\x80\x02ctorch.storage\nUntypedStorage\n)R.",
        b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00utf-8\x86R.",
        b"\x80\x02ccollections\nOrderedDict\n)R)R.",  # REDUCE on a REDUCE result
        b"\x80\x02ctorch\nfloat32\n)R.",
    ],
    ids=["storage-class", "untyped-storage", "codecs-utf8", "reduce-on-result", "dtype-call"],
)
def test_allowed_globals_are_not_callable_in_any_way(payload):
    with pytest.raises(UnsafePickleError):
        scan_pickle(payload)


# -- refused: opcodes that build arbitrary objects -------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"(i__main__\nEvil\n.",  # INST
        b"(ccollections\nOrderedDict\no.",  # OBJ on an allowed global
        b"\x80\x02ccollections\nOrderedDict\n)\x81.",  # NEWOBJ on an allowed global
        b"\x80\x04ccollections\nOrderedDict\n)}\x92.",  # NEWOBJ_EX
        b"\x80\x02\x82\x01.",  # EXT1
        b"\x80\x02]}b.",  # BUILD on a list
        b"P0\n.",  # PERSID (text)
        b"\x80\x02X\x01\x00\x00\x00xQ.",  # BINPERSID with something not a storage id
        b"\x80\x05\x97.",  # NEXT_BUFFER
    ],
    ids=[
        "INST",
        "OBJ",
        "NEWOBJ",
        "NEWOBJ_EX",
        "EXT1",
        "BUILD-list",
        "PERSID",
        "BINPERSID",
        "NEXT_BUFFER",
    ],
)
def test_object_building_opcodes_are_refused(payload):
    with pytest.raises(UnsafePickleError):
        scan_pickle(payload)


# -- malformed -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x80\x02",
        b"\x80\x02}",
        b"\x80\x02a.",
        b"\x80\x02h\x05.",
        b"\x80\x02(K\x01d.",
        b"\x80\x02K\x01K\x02s.",
        b"\x80\x02\xff.",
        b"\x80\x02X\xff\xff\xff\xff.",
        b"\x80\x02](]l\x85u.",
    ],
    ids=[
        "empty",
        "no-stop",
        "no-stop-2",
        "stack-underflow",
        "missing-memo",
        "odd-dict",
        "setitem-on-int",
        "bad-opcode",
        "string-past-end",
        "setitems-on-list",
    ],
)
def test_malformed_pickle_is_not_a_checkpoint(payload):
    with pytest.raises(NotACheckpointError):
        scan_pickle(payload)


def test_deeply_nested_containers_are_refused_not_crashing():
    depth = 100_000
    payload = b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."
    scanned = scan_pickle(payload)  # the scan itself is iterative
    with pytest.raises(NotACheckpointError, match="deep"):
        name_storages(scanned)


def test_nesting_within_the_limit_is_walked():
    depth = MAX_DEPTH - 1
    payload = b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."
    assert walk_tensors(scan_pickle(payload).root) == []


@pytest.mark.parametrize(
    ("offset", "shape", "stride", "message"),
    [
        (0, (5,), (1,), "beyond storage"),
        (2, (2, 2), (2, 1), "beyond storage"),
        (-1, (1,), (1,), "offset"),
        (0, (2,), (-1,), "negative"),
        (0, (2, 2), (1,), "disagree"),
        (0, (-2,), (1,), "negative"),
        (0, (2.0,), (1,), "tuple of ints"),
    ],
)
def test_tensor_views_must_lie_inside_their_storage(offset, shape, stride, message):
    payload = dump_pickle({"w": RebuildTensor(StorageId("0", 4), offset, shape, stride)})
    with pytest.raises(NotACheckpointError, match=message):
        scan_pickle(payload)


def test_view_at_the_very_end_of_its_storage_is_fine():
    payload = dump_pickle(
        {
            "w": RebuildTensor(StorageId("0", 4), 3, (1,), (1,)),
            "e": RebuildTensor(StorageId("0", 4), 4, (0,), (1,)),
        }
    )
    tensors = dict(walk_tensors(scan_pickle(payload).root))
    assert isinstance(tensors["w"], TensorRef) and tensors["w"].offset == 3


@pytest.mark.parametrize("numel", [-1, True, 2.5])
def test_storage_with_a_bad_element_count(numel):
    payload = dump_pickle({"w": [StorageId("0", numel)]})
    with pytest.raises(NotACheckpointError, match="element count"):
        scan_pickle(payload)


def test_storage_declared_with_two_sizes():
    payload = dump_pickle([StorageId("0", 4), StorageId("0", 5)])
    with pytest.raises(NotACheckpointError, match="two sizes"):
        scan_pickle(payload)
