"""Files that are not checkpoints chunkd can take: each is refused with a precise CheckpointError
and a clear message, nothing in it is ever executed, the file is left as it was, and the database
does not change (round list, row counts and the database file's SHA-256)."""

from __future__ import annotations

import builtins
import collections
import contextlib
import io
import os
import pickle
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from strategies import (
    RawEntry,
    RebuildTensor,
    Reduce,
    StorageId,
    build_raw_zip,
    crafted_checkpoint,
    dump_pickle,
    local_header,
    payload_range,
    random_tensor,
    read_members,
    replace_members,
    save_checkpoint,
    tensor_bytes,
    zip_members,
)

from chunkd.errors import (
    CheckpointError,
    CrcMismatchError,
    FileChangedError,
    LegacyFormatError,
    NotACheckpointError,
    TruncatedError,
    UnsafePickleError,
)
from chunkd.ingest import ingest_file
from chunkd.store import ChunkStore, FileIdentity


def model_state() -> collections.OrderedDict[str, torch.Tensor]:
    return collections.OrderedDict(
        [
            ("fc.weight", random_tensor(torch.float32, (32, 16), 1)),
            ("fc.bias", random_tensor(torch.float32, (32,), 2)),
        ]
    )


@pytest.fixture
def good(tmp_path, writer_store, engine) -> bytes:
    """A store holding round 1; returns the bytes of a valid checkpoint for round 2."""
    save_checkpoint(model_state(), tmp_path / "model_round_1.pth")
    engine.ingest(tmp_path / "model_round_1.pth", writer_store)
    state = model_state()
    state["fc.bias"] = state["fc.bias"] + 1
    return save_checkpoint(state, tmp_path / "valid.pth")


def assert_rejected(
    engine,
    store: ChunkStore,
    db_path: Path,
    path: Path,
    data: bytes,
    error: type[CheckpointError],
    match: str | None = None,
) -> CheckpointError:
    """Ingesting ``data`` (written to ``path``) raises ``error`` and changes nothing."""
    path.write_bytes(data)
    before = engine.fingerprint(db_path)
    with pytest.raises(error, match=match) as info:
        engine.ingest(path, store)
    assert isinstance(info.value, CheckpointError)
    assert len(str(info.value)) >= 10, "the reason must say something"
    assert engine.fingerprint(db_path) == before
    assert path.read_bytes() == data
    # nothing was recorded about the file: once it is fixed it is taken
    assert store.find_source(str(path), FileIdentity.of(path.stat())) is None
    return info.value


# -- damaged files ---------------------------------------------------------------------------------


def test_empty_file(tmp_path, writer_store, db_path, engine, good):
    assert_rejected(
        engine,
        writer_store,
        db_path,
        tmp_path / "model_round_2.pth",
        b"",
        NotACheckpointError,
        "empty",
    )


@pytest.mark.parametrize("cut", [1, 3, 4, 29, 30, 100, 0.5, -200, -23, -22, -1])
def test_truncated_file(tmp_path, writer_store, db_path, engine, good, cut):
    end = int(len(good) * cut) if isinstance(cut, float) else cut % len(good)
    error = assert_rejected(
        engine, writer_store, db_path, tmp_path / "model_round_2.pth", good[:end], CheckpointError
    )
    if end >= 30:  # starts with a whole zip local header: it may still be being written
        assert isinstance(error, TruncatedError)
        assert error.retryable


def test_truncated_file_is_taken_once_complete(tmp_path, writer_store, db_path, engine, good):
    path = tmp_path / "model_round_2.pth"
    assert_rejected(engine, writer_store, db_path, path, good[: len(good) // 2], CheckpointError)
    path.write_bytes(good)
    assert engine.ingest(path, writer_store).outcome == "ingested"
    assert engine.restore(writer_store, 2) == good


@pytest.mark.parametrize("where", [0, 1, 0.5, -1])
def test_flipped_byte_in_a_storage_record(tmp_path, writer_store, db_path, engine, good, where):
    start, end = payload_range(good, "data/0")
    pos = (
        start + int((end - start) * where)
        if isinstance(where, float)
        else (start + where if where >= 0 else end + where)
    )
    bad = bytearray(good)
    bad[pos] ^= 0x40
    assert_rejected(
        engine,
        writer_store,
        db_path,
        tmp_path / "model_round_2.pth",
        bytes(bad),
        CrcMismatchError,
        "CRC",
    )


@pytest.mark.parametrize("member", ["data.pkl", "version", "byteorder"])
def test_flipped_byte_in_a_small_record(tmp_path, writer_store, db_path, engine, good, member):
    start, end = payload_range(good, member)
    bad = bytearray(good)
    bad[(start + end) // 2] ^= 0x01
    assert_rejected(
        engine,
        writer_store,
        db_path,
        tmp_path / "model_round_2.pth",
        bytes(bad),
        CrcMismatchError,
        member,
    )


@pytest.mark.parametrize("seed", range(4))
def test_random_bytes(tmp_path, writer_store, db_path, engine, good, seed):
    data = os.urandom(100 + 3000 * seed)
    if seed % 2:
        data = b"PK\x03\x04" + data  # looks like a zip at first sight
    assert_rejected(
        engine, writer_store, db_path, tmp_path / "model_round_2.pth", data, CheckpointError
    )


def test_directory_is_not_a_checkpoint(tmp_path, writer_store, db_path, engine, good):
    directory = tmp_path / "model_round_2.pth"
    directory.mkdir()
    before = engine.fingerprint(db_path)
    with pytest.raises(NotACheckpointError, match="regular file"):
        engine.ingest(directory, writer_store)
    assert engine.fingerprint(db_path) == before


@pytest.mark.parametrize("how", ["touched", "appended"])
def test_file_changed_while_read(tmp_path, writer_store, db_path, engine, good, hooked_pool, how):
    path = tmp_path / "model_round_2.pth"
    path.write_bytes(good)

    def change(call: int) -> None:
        if call != 1:
            return
        if how == "touched":
            stat = path.stat()
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 3_000_000_000))
        else:
            with open(path, "ab") as f:
                f.write(b"more")

    before = engine.fingerprint(db_path)
    pool = hooked_pool(change)
    with pytest.raises(FileChangedError, match="changed while it was read") as info:
        ingest_file(path, writer_store, engine.options(chunk_num=4), pool=pool)
    assert pool.calls >= 1
    assert info.value.retryable
    assert engine.fingerprint(db_path) == before
    path.write_bytes(good)  # the client finishes writing: then the file is taken
    assert engine.ingest(path, writer_store).outcome == "ingested"


def test_symlink_is_refused_as_a_checkpoint_error(tmp_path, writer_store, db_path, engine, good):
    """A link could point anywhere; it is refused with a reason, not a bare OSError (ELOOP)."""
    link = tmp_path / "model_round_2.pth"
    link.symlink_to(tmp_path / "valid.pth")
    before = engine.fingerprint(db_path)
    with pytest.raises(NotACheckpointError, match="symbolic link"):
        engine.ingest(link, writer_store)
    assert engine.fingerprint(db_path) == before


# -- zips that are not checkpoints -----------------------------------------------------------------


def test_zip_with_a_text_file(tmp_path, writer_store, db_path, engine, good):
    data = zip_members({"notes/readme.txt": b"not a model\n"})
    assert_rejected(
        engine,
        writer_store,
        db_path,
        tmp_path / "model_round_2.pth",
        data,
        NotACheckpointError,
        "data.pkl",
    )


def test_zip_without_a_top_folder(tmp_path, writer_store, db_path, engine, good):
    data = zip_members({"data.pkl": pickle.dumps({}), "version": b"3\n"})
    assert_rejected(
        engine,
        writer_store,
        db_path,
        tmp_path / "model_round_2.pth",
        data,
        NotACheckpointError,
        "top folder",
    )


def test_deflate_compressed_members(tmp_path, writer_store, db_path, engine, good):
    data = replace_members(good, {}, compression=zipfile.ZIP_DEFLATED)
    assert read_members(data) == read_members(good)
    assert_rejected(
        engine,
        writer_store,
        db_path,
        tmp_path / "model_round_2.pth",
        data,
        LegacyFormatError,
        "compressed",
    )


def test_legacy_torch_save(tmp_path, writer_store, db_path, engine, good):
    path = tmp_path / "model_round_2.pth"
    torch.save(model_state(), path, _use_new_zipfile_serialization=False)
    assert_rejected(
        engine, writer_store, db_path, path, path.read_bytes(), LegacyFormatError, "legacy"
    )


def test_big_endian_checkpoint(tmp_path, writer_store, db_path, engine, good):
    data = replace_members(good, {"byteorder": b"big"})
    assert_rejected(
        engine,
        writer_store,
        db_path,
        tmp_path / "model_round_2.pth",
        data,
        LegacyFormatError,
        "byte order",
    )


@pytest.mark.parametrize(
    "evil_name",
    [
        "valid/../../etc/passwd",
        "valid/./data/9",
        "/valid/data/9",
        "valid//data/9",
        "valid\\data\\9",
    ],
)
def test_unsafe_member_names(tmp_path, writer_store, db_path, engine, good, evil_name):
    members = read_members(good)
    members[evil_name] = b"x" * 8
    data = zip_members(members)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert evil_name in zf.namelist()  # zipfile wrote the name as given
    assert_rejected(
        engine,
        writer_store,
        db_path,
        tmp_path / "model_round_2.pth",
        data,
        NotACheckpointError,
        "unsafe",
    )


def test_overlapping_members(tmp_path, writer_store, db_path, engine, good):
    """A member whose local header sits inside another member's payload (zip-bomb style)."""
    members = read_members(good)
    pickle_bytes = members["valid/data.pkl"]
    hidden = local_header(b"valid/version", b"3\n")
    entries = [
        RawEntry(b"valid/data.pkl", pickle_bytes),
        RawEntry(b"valid/data/0", members["valid/data/0"]),
        RawEntry(b"valid/data/1", members["valid/data/1"]),
        RawEntry(b"valid/byteorder", b"little"),
        RawEntry(b"valid/padding", hidden),
    ]
    plain = build_raw_zip(entries)
    hidden_at = plain.index(hidden, plain.index(b"valid/padding") + 13)
    data = build_raw_zip(
        [
            *entries,
            RawEntry(b"valid/version", b"3\n", write_local=False, cd_header_offset=hidden_at),
        ]
    )
    assert_rejected(
        engine,
        writer_store,
        db_path,
        tmp_path / "model_round_2.pth",
        data,
        NotACheckpointError,
        "overlap",
    )


# -- pickles that must never run -------------------------------------------------------------------


def with_data_pkl(good: bytes, payload: bytes) -> bytes:
    return replace_members(good, {"data.pkl": payload})


def evil_payloads(marker: Path) -> dict[str, bytes]:
    command = f"touch {marker}"
    state = model_state()
    return {
        "os.system": pickle.dumps(Reduce(os.system, command), protocol=2),
        "os.system-protocol-4": pickle.dumps(Reduce(os.system, command), protocol=4),
        "builtins.eval": pickle.dumps(
            Reduce(builtins.eval, f"__import__('os').system({command!r})"), protocol=2
        ),
        "builtins.open": pickle.dumps(Reduce(builtins.open, str(marker), "w"), protocol=2),
        "exec-inside-a-state-dict": dump_pickle(
            {
                "hook": Reduce(builtins.exec, f"import os; os.system({command!r})"),
                "model": {"fc.weight": RebuildTensor(StorageId("0", 512), 0, (32, 16), (16, 1))},
            }
        ),
        "nested-reduce": (
            b"\x80\x02cbuiltins\ngetattr\ncbuiltins\n__import__\nX\x02\x00\x00\x00os\x85R"
            b"X\x06\x00\x00\x00system\x86R"
            + b"X"
            + len(command).to_bytes(4, "little")
            + command.encode()
            + b"\x85R."
        ),
        "reduce-on-a-reduce-result": b"\x80\x02ccollections\nOrderedDict\n)R)R.",
        "subprocess": pickle.dumps(Reduce(subprocess.call, ["touch", str(marker)])),
        "state_dict-then-evil": dump_pickle([dict(state), Reduce(os.system, command)]),
    }


@pytest.mark.parametrize(
    "kind",
    [
        "os.system",
        "os.system-protocol-4",
        "builtins.eval",
        "builtins.open",
        "exec-inside-a-state-dict",
        "nested-reduce",
        "reduce-on-a-reduce-result",
        "subprocess",
        "state_dict-then-evil",
    ],
)
def test_malicious_pickle_is_refused_and_never_run(
    tmp_path, writer_store, db_path, engine, good, kind
):
    marker = tmp_path / "MARKER"
    payload = evil_payloads(marker)[kind]
    if kind not in ("reduce-on-a-reduce-result", "state_dict-then-evil"):
        # control: the payload is real, unpickling it does create the marker
        with contextlib.suppress(Exception):  # e.g. no persistent_load after the payload ran
            pickle.loads(payload)
        assert marker.exists(), "the test payload should have worked under pickle.loads"
        marker.unlink()
    data = with_data_pkl(good, payload)
    error = assert_rejected(
        engine, writer_store, db_path, tmp_path / "model_round_2.pth", data, UnsafePickleError
    )
    assert "not allowed" in str(error) or "not a storage" in str(error)
    assert not marker.exists()


@pytest.mark.parametrize(
    "opcode",
    [
        b"(cbuiltins\nobject\no.",
        b"(i__main__\nX\n.",
        b"\x80\x02cbuiltins\nobject\n)\x81.",
        b"\x80\x02\x82\x01.",
    ],
)
def test_object_building_opcodes_are_refused(tmp_path, writer_store, db_path, engine, good, opcode):
    assert_rejected(
        engine,
        writer_store,
        db_path,
        tmp_path / "model_round_2.pth",
        with_data_pkl(good, opcode),
        UnsafePickleError,
    )


# -- pickles that lie about their storages ---------------------------------------------------------


def test_crafted_checkpoint_control_is_accepted(tmp_path, writer_store, engine, good):
    """The builder used below makes files that chunkd and torch both take when they are honest."""
    raw = random_tensor(torch.float32, (8,), 3)
    obj = {"w": RebuildTensor(StorageId("0", 8), 2, (2, 3), (3, 1))}
    path = tmp_path / "model_round_2.pth"
    path.write_bytes(crafted_checkpoint(obj, {"0": tensor_bytes(raw)}))
    assert engine.ingest(path, writer_store).outcome == "ingested"
    loaded = torch.load(path, weights_only=True)
    assert tensor_bytes(loaded["w"]) == tensor_bytes(raw[2:8].reshape(2, 3))
    assert engine.restore(writer_store, 2) == path.read_bytes()


@pytest.mark.parametrize("numel", [2**40, 2**62, 17])
def test_huge_declared_storage_size(tmp_path, writer_store, db_path, engine, good, numel):
    obj = {"w": RebuildTensor(StorageId("0", numel), 0, (4,), (1,))}
    data = crafted_checkpoint(obj, {"0": bytes(16)})
    assert_rejected(
        engine,
        writer_store,
        db_path,
        tmp_path / "model_round_2.pth",
        data,
        NotACheckpointError,
        "storage '0'",
    )


@pytest.mark.parametrize(
    ("offset", "shape", "stride"),
    [
        (0, (100,), (1,)),
        (3, (2, 2), (2, 1)),
        (0, (4, 2), (1, 4)),
        (16, (1,), (1,)),
        (0, (2,), (-1,)),
        (0, (3,), (1, 1)),
    ],
)
def test_tensor_view_past_its_storage(
    tmp_path, writer_store, db_path, engine, good, offset, shape, stride
):
    obj = {"w": RebuildTensor(StorageId("0", 4), offset, shape, stride)}
    data = crafted_checkpoint(obj, {"0": bytes(16)})
    assert_rejected(
        engine, writer_store, db_path, tmp_path / "model_round_2.pth", data, NotACheckpointError
    )


def test_storage_missing_from_the_zip(tmp_path, writer_store, db_path, engine, good):
    obj = {"w": RebuildTensor(StorageId("7", 4), 0, (4,), (1,))}
    data = crafted_checkpoint(obj, {"0": bytes(16)})
    assert_rejected(
        engine,
        writer_store,
        db_path,
        tmp_path / "model_round_2.pth",
        data,
        NotACheckpointError,
        "'7'",
    )


def test_one_storage_declared_with_two_sizes(tmp_path, writer_store, db_path, engine, good):
    obj = {
        "a": RebuildTensor(StorageId("0", 4), 0, (4,), (1,)),
        "b": RebuildTensor(StorageId("0", 8), 0, (8,), (1,)),
    }
    data = crafted_checkpoint(obj, {"0": bytes(16)})
    assert_rejected(
        engine,
        writer_store,
        db_path,
        tmp_path / "model_round_2.pth",
        data,
        NotACheckpointError,
        "two sizes",
    )


# -- any damage: refused cleanly, or taken and restored byte-identical -----------------------------


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    flips=st.lists(st.tuples(st.integers(0, 2**20), st.integers(1, 255)), min_size=1, max_size=3),
    cut=st.one_of(st.none(), st.integers(0, 2**20)),
)
def test_any_damage_is_refused_or_restored_exactly(tmp_path_factory, engine, flips, cut):
    directory = tmp_path_factory.mktemp("fuzz")
    state = {"w": random_tensor(torch.float32, (20,), 0), "n": torch.tensor(3)}
    data = bytearray(save_checkpoint(state, directory / "model_round_1.pth"))
    for where, xor in flips:
        data[where % len(data)] ^= xor
    if cut is not None:
        data = data[: cut % len(data)]
    path = directory / "model_round_1.pth"
    path.write_bytes(bytes(data))
    db = directory / "client_1_chunks.db"
    with ChunkStore.open_writer(db) as store:
        before = engine.fingerprint(db)
        try:
            result = engine.ingest(path, store, chunk_num=3)
        except CheckpointError as e:
            event(f"rejected: {type(e).__name__}")
            assert str(e)
            assert engine.fingerprint(db) == before
        else:
            event("taken")
            assert result.outcome == "ingested"
            assert engine.restore(store, result.round_num) == bytes(data)
