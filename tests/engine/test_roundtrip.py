"""The correctness promise: ingest, then restore, gives the same file and the same tensors.

Property-based over random checkpoints (tests/strategies.py): every dtype torch saves, 0-dim and
empty tensors, nested containers, tied weights and views, NaNs with random payloads; random
``chunk_num``, a ``max_chunk_bytes`` small enough to force the cap, compression on and off, files
saved to a path and to a buffer, pickle protocols 2, 4 and 5.
"""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import (
    RebuildTensor,
    StorageId,
    checkpoints,
    dtype_name,
    dump_pickle,
    named_tensors,
    random_tensor,
    save_checkpoint,
    small_cnn_state,
    tensor_bytes,
    zip_members,
)

from chunkd.export import read_round_tensors, to_torch
from chunkd.store import ChunkStore
from chunkd.verify import verify_store

PROPERTY = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def load_reference(path: Path, protocol: int = 2) -> object:
    """What torch reads from the file. torch's weights_only unpickler (2.13) rejects the FRAME and
    MEMOIZE opcodes of protocols 4 and 5, so those files, which this test wrote itself, are read
    with the full unpickler."""
    return torch.load(path, weights_only=protocol < 4)


def assert_same_tensors(store: ChunkStore, round_num: int, path: Path, protocol: int = 2) -> None:
    """``read_round_tensors`` == ``torch.load(weights_only=True)``, name by name, bit for bit."""
    expected = named_tensors(load_reference(path, protocol))
    got = read_round_tensors(store, round_num)
    assert sorted(got) == sorted(expected)
    for name, want in expected.items():
        tensor = got[name]
        assert tensor.dtype == dtype_name(want.dtype), name
        assert tensor.shape == tuple(want.shape), name
        restored = to_torch(tensor)
        assert restored.dtype == want.dtype, name
        assert tuple(restored.shape) == tuple(want.shape), name
        assert tensor_bytes(restored) == tensor_bytes(want), name


def ingest_and_check(
    engine, directory: Path, path: Path, file_bytes: bytes, protocol: int = 2, **options: object
) -> None:
    with ChunkStore.open_writer(directory / "client_1_chunks.db") as store:
        result = engine.ingest(path, store, **options)
        assert result.outcome == "ingested"
        assert result.file_sha256 == engine.sha256(file_bytes)
        restored = engine.restore(store, result.round_num)
        assert engine.sha256(restored) == engine.sha256(file_bytes)
        assert restored == file_bytes
        assert_same_tensors(store, result.round_num, path, protocol)
        report = verify_store(store)
        assert report.ok, report.problems


@PROPERTY
@given(
    obj=checkpoints(),
    chunk_num=st.integers(1, 40),
    max_chunk_bytes=st.integers(16, 4096),
    compression=st.sampled_from(["none", "auto"]),
    to_buffer=st.booleans(),
    protocol=st.sampled_from([2, 4, 5]),
)
def test_random_checkpoint_round_trips(
    tmp_path_factory, engine, obj, chunk_num, max_chunk_bytes, compression, to_buffer, protocol
):
    directory = tmp_path_factory.mktemp("roundtrip")
    path = directory / "model_round_3.pth"
    data = save_checkpoint(obj, path, to_buffer=to_buffer, protocol=protocol)
    assert data[:4] == b"PK\x03\x04"
    ingest_and_check(
        engine,
        directory,
        path,
        data,
        protocol,
        chunk_num=chunk_num,
        max_chunk_bytes=max_chunk_bytes,
        compression=compression,
    )


@pytest.mark.parametrize("compression", ["none", "auto"])
@pytest.mark.parametrize("to_buffer", [False, True])
def test_trained_batchnorm_cnn_survives_bit_exact(tmp_path, engine, compression, to_buffer):
    state = small_cnn_state(steps=2)
    assert int(state["1.num_batches_tracked"]) == 2
    assert not torch.equal(state["1.running_mean"], torch.zeros(8))
    assert not torch.equal(state["1.running_var"], torch.ones(8))
    path = tmp_path / "client_2_round_7.pth"
    data = save_checkpoint({"cur_round": 7, "model": state}, path, to_buffer=to_buffer)
    assert (b"archive/data.pkl" in data) == to_buffer
    with ChunkStore.open_writer(tmp_path / "client_2_chunks.db") as store:
        result = engine.ingest(
            path, store, chunk_num=10, max_chunk_bytes=1024, compression=compression
        )
        assert result.round_num == 7
        assert result.chunks >= 10
        assert engine.restore(store, 7) == data
        got = read_round_tensors(store, 7)
        for name in ("1.running_mean", "1.running_var", "1.num_batches_tracked", "4.weight"):
            want = state[name]
            restored = to_torch(got[f"model.{name}"])
            assert restored.dtype == want.dtype
            assert tensor_bytes(restored) == tensor_bytes(want)
        assert_same_tensors(store, 7, path)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pickle_protocols_round_trip(tmp_path, engine, protocol):
    """Protocols 4 and 5 add FRAME and MEMOIZE opcodes to data.pkl."""
    state = small_cnn_state(steps=1)
    obj = {"cur_round": 1, "model": state, "meta": ("x" * 100, [1.5, None, True], {"k": 2**65})}
    path = tmp_path / "model_round_1.pth"
    data = save_checkpoint(obj, path, protocol=protocol)
    ingest_and_check(engine, tmp_path, path, data, protocol, chunk_num=7, max_chunk_bytes=512)


def test_nan_payloads_and_signed_zeros_survive(tmp_path, engine):
    """Random NaN payloads (quiet and signalling), -0.0 and subnormals, in every float width."""
    specials = (
        torch.tensor(
            [0x7FC00001, 0x7F800001, 0xFFFFFFFF, 0x80000000, 0x00000001], dtype=torch.int64
        )
        .to(torch.int32)
        .view(torch.float32)
    )
    state = {
        "f32": specials,
        "f16": random_tensor(torch.float16, (257,), 1),
        "bf16": random_tensor(torch.bfloat16, (3, 5), 2),
        "f64": random_tensor(torch.float64, (33,), 3),
        "c64": random_tensor(torch.complex64, (4, 4), 4),
    }
    assert torch.isnan(state["f32"]).sum() == 3
    path = tmp_path / "model_round_5.pth"
    data = save_checkpoint(state, path)
    ingest_and_check(
        engine, tmp_path, path, data, chunk_num=3, max_chunk_bytes=64, compression="auto"
    )


def test_views_and_tied_weights_are_stored_once(tmp_path, engine):
    base = random_tensor(torch.float32, (16, 16), 5)
    state = collections.OrderedDict(
        [
            ("encoder.weight", base),
            ("decoder.weight", base),
            ("head.t", base.t()),
            ("head.slice", base[3:, 2:]),
            ("head.row", base[15]),
        ]
    )
    path = tmp_path / "model_round_1.pth"
    data = save_checkpoint(state, path)
    with ChunkStore.open_writer(tmp_path / "client_1_chunks.db") as store:
        result = engine.ingest(path, store, chunk_num=4)
        # one storage of 256 float32s: 1 KiB of chunk bytes, not five copies
        assert result.bytes_new == 16 * 16 * 4
        assert engine.restore(store, 1) == data
        assert_same_tensors(store, 1, path)


def test_only_empty_and_zero_dim_tensors(tmp_path, engine):
    state = {
        "empty": torch.empty(0),
        "empty2d": torch.empty(3, 0),
        "scalar": torch.tensor(2.5),
        "int_scalar": torch.tensor(7),
        "bool_scalar": torch.tensor(True),
    }
    path = tmp_path / "model_round_1.pth"
    data = save_checkpoint(state, path)
    ingest_and_check(engine, tmp_path, path, data, chunk_num=10)


def test_checkpoint_without_tensors_round_trips(tmp_path, engine):
    """No elements, no chunks: the file is all residue and still comes back byte-identical."""
    path = tmp_path / "model_round_1.pth"
    data = save_checkpoint({"cur_round": 1, "note": "no tensors", "lr": 0.1}, path)
    with ChunkStore.open_writer(tmp_path / "client_1_chunks.db") as store:
        result = engine.ingest(path, store)
        assert result.chunks == 0
        assert engine.restore(store, 1) == data
        assert read_round_tensors(store, 1) == {}


def test_checkpoint_with_set_and_complex_values(tmp_path, engine):
    """torch.save's protocol 2 names these ``__builtin__.set``/``complex``; torch takes them."""
    obj = {"cur_round": 2, "model": small_cnn_state(steps=1), "classes": {0, 1, 2}, "z": 1 - 2j}
    path = tmp_path / "model_round_2.pth"
    data = save_checkpoint(obj, path)
    assert b"__builtin__" in data
    ingest_and_check(engine, tmp_path, path, data)


def test_storages_out_of_checkpoint_order_and_unreferenced_records(tmp_path, engine):
    """A zip whose storage records are not in first-use order, plus a record data.pkl never
    names: the file is still rebuilt byte for byte and the tensors read back."""
    first = random_tensor(torch.float32, (8,), 1)
    second = random_tensor(torch.int16, (5,), 2)
    obj = {
        "a": RebuildTensor(StorageId("0", 8), 0, (8,), (1,)),
        "b": RebuildTensor(StorageId("1", 5, torch.ShortStorage), 0, (5,), (1,)),
    }
    members = {
        "archive/data.pkl": dump_pickle(obj),
        "archive/data/1": tensor_bytes(second),
        "archive/byteorder": b"little",
        "archive/data/0": tensor_bytes(first),
        "archive/data/9": b"a record nobody names",
        "archive/version": b"3\n",
    }
    path = tmp_path / "model_round_4.pth"
    data = zip_members(members)
    path.write_bytes(data)
    ingest_and_check(engine, tmp_path, path, data, chunk_num=3)


def test_distinct_tensors_with_equal_dotted_paths_are_all_exported(tmp_path, engine):
    first, second = random_tensor(torch.float32, (3,), 1), random_tensor(torch.float32, (3,), 2)
    path = tmp_path / "model_round_1.pth"
    save_checkpoint({"a.b": first, "a": {"b": second}}, path)
    with ChunkStore.open_writer(tmp_path / "client_1_chunks.db") as store:
        engine.ingest(path, store)
        tensors = read_round_tensors(store, 1)
    exported = sorted(tensor_bytes(to_torch(t)) for t in tensors.values())
    assert exported == sorted([tensor_bytes(first), tensor_bytes(second)])
