"""The database: the seed's schema, deduplication, one writer, atomic rounds, ingest outcomes,
and chunk descriptors exactly as SPEC.md ("The flat index and chunks") gives them."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from strategies import (
    itemsize,
    random_tensor,
    save_checkpoint,
    tensor_bytes,
)

from chunkd import codec
from chunkd.errors import BusyError
from chunkd.ingest import ingest_file
from chunkd.store import CACHE_KIB, ChunkStore
from chunkd.store.core import INITIAL_PAGE_SIZE
from chunkd.store.schema import page_size_for
from chunkd.verify import verify_store

# -- schema ----------------------------------------------------------------------------------------

#: (name, declared type, NOT NULL, default, primary key) of the seed's columns, in order
SEED_COLUMNS = {
    "chunk_metadata": [
        ("id", "INTEGER", 0, None, 1),
        ("round_num", "INTEGER", 1, None, 0),
        ("chunk_id", "INTEGER", 1, None, 0),
        ("chunk_hash", "TEXT", 1, None, 0),
        ("parts_info", "TEXT", 1, None, 0),
        ("flat_size", "INTEGER", 1, None, 0),
        ("created_at", "TIMESTAMP", 0, "CURRENT_TIMESTAMP", 0),
    ],
    "chunk_data": [
        ("id", "INTEGER", 0, None, 1),
        ("chunk_hash", "TEXT", 1, None, 0),
        ("data", "BLOB", 1, None, 0),
        ("created_at", "TIMESTAMP", 0, "CURRENT_TIMESTAMP", 0),
    ],
}


def index_columns(engine, db: Path, index: str) -> list[str]:
    return [row[2] for row in engine.query(db, f"PRAGMA index_info({index})")]


def unique_constraints(engine, db: Path, table: str) -> list[list[str]]:
    rows = engine.query(db, f"PRAGMA index_list({table})")
    return [
        index_columns(engine, db, name)
        for _seq, name, unique, origin, _p in rows
        if unique and origin == "u"
    ]


def test_schema_has_the_seed_tables_columns_and_indexes(writer_store, db_path, engine):
    for table, columns in SEED_COLUMNS.items():
        info = engine.query(db_path, f"PRAGMA table_info({table})")
        got = [
            (name, ctype.upper(), notnull, default, pk)
            for _cid, name, ctype, notnull, default, pk in info
        ]
        # more columns at the end are fine; the seed's come first, exactly
        assert got[: len(columns)] == columns, table
        sql = engine.query(db_path, "SELECT sql FROM sqlite_master WHERE name = ?", (table,))[0][0]
        assert "AUTOINCREMENT" in sql.upper(), table
    assert unique_constraints(engine, db_path, "chunk_metadata") == [["round_num", "chunk_id"]]
    assert unique_constraints(engine, db_path, "chunk_data") == [["chunk_hash"]]
    indexes = dict(
        engine.query(
            db_path,
            "SELECT name, tbl_name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL",
        )
    )
    assert indexes["idx_chunk_metadata_round"] == "chunk_metadata"
    assert indexes["idx_chunk_metadata_hash"] == "chunk_metadata"
    assert index_columns(engine, db_path, "idx_chunk_metadata_round") == ["round_num"]
    assert index_columns(engine, db_path, "idx_chunk_metadata_hash") == ["chunk_hash"]


def test_pragmas_allow_retention_to_give_space_back(writer_store, db_path, engine):
    assert engine.query(db_path, "PRAGMA auto_vacuum") == [(2,)]  # INCREMENTAL
    assert engine.query(db_path, "PRAGMA page_size") == [(INITIAL_PAGE_SIZE,)]
    (mode,) = engine.query(db_path, "PRAGMA journal_mode")[0]
    assert mode in ("delete", "truncate", "persist", "wal")  # never off or memory


def test_a_new_database_gets_a_bounded_page_cache(db_path):
    """Setting page_size resets cache_size: at 64 KiB pages the default would pin 256 MiB."""
    with ChunkStore.open_writer(db_path) as store:
        store.begin_round(size_hint=1 << 30)  # an empty database takes the large-model page size
        assert store._conn.execute("PRAGMA page_size").fetchone() == (16384,)
    with ChunkStore.open_writer(db_path) as store:
        (cache,) = store._conn.execute("PRAGMA cache_size").fetchone()
    assert cache == -CACHE_KIB


def test_pragmas_survive_reopening(db_path, engine, tmp_path):
    ChunkStore.open_writer(db_path).close()
    with ChunkStore.open_writer(db_path) as store:
        path = tmp_path / "model_round_1.pth"
        data = save_checkpoint({"w": random_tensor(torch.float32, (64,), 0)}, path)
        engine.ingest(path, store)
        assert engine.restore(store, 1) == data
    assert engine.query(db_path, "PRAGMA auto_vacuum") == [(2,)]
    assert engine.query(db_path, "PRAGMA page_size") == [(page_size_for(len(data)),)]


# -- deduplication ---------------------------------------------------------------------------------


def mlp_state(seed: int = 0) -> collections.OrderedDict[str, torch.Tensor]:
    """~170 KiB of float32: two hidden layers and a small classifier at the end."""
    return collections.OrderedDict(
        [
            ("features.0.weight", random_tensor(torch.float32, (128, 128), seed)),
            ("features.0.bias", random_tensor(torch.float32, (128,), seed + 1)),
            ("features.1.weight", random_tensor(torch.float32, (128, 192), seed + 2)),
            ("features.1.bias", random_tensor(torch.float32, (128,), seed + 3)),
            ("classifier.weight", random_tensor(torch.float32, (10, 128), seed + 4)),
            ("classifier.bias", random_tensor(torch.float32, (10,), seed + 5)),
        ]
    )


def test_same_tensors_in_another_file_add_no_chunk_bytes(tmp_path, writer_store, db_path, engine):
    state = mlp_state()
    first = save_checkpoint(state, tmp_path / "model_round_1.pth")
    second = save_checkpoint(state, tmp_path / "model_round_2.pth")
    assert first != second  # another top folder and serialization id: not a byte copy
    r1 = engine.ingest(tmp_path / "model_round_1.pth", writer_store, max_chunk_bytes=16 << 10)
    assert r1.bytes_new >= sum(t.numel() * 4 for t in state.values())
    chunk_rows = engine.fingerprint(db_path).chunk_rows
    r2 = engine.ingest(tmp_path / "model_round_2.pth", writer_store, max_chunk_bytes=16 << 10)
    assert (r2.outcome, r2.round_num, r2.chunks_new, r2.bytes_new) == ("ingested", 2, 0, 0)
    assert r2.chunks == r1.chunks
    after = engine.fingerprint(db_path)
    assert after.rounds == (1, 2)
    assert after.chunk_rows == chunk_rows
    assert after.metadata_rows == 2 * r1.chunks
    assert engine.restore(writer_store, 1) == first
    assert engine.restore(writer_store, 2) == second


@pytest.mark.parametrize("changed", ["features.0.weight", "features.1.bias", "classifier.weight"])
def test_a_changed_layer_adds_about_its_bytes(tmp_path, writer_store, engine, changed):
    state = mlp_state()
    save_checkpoint(state, tmp_path / "model_round_1.pth")
    r1 = engine.ingest(tmp_path / "model_round_1.pth", writer_store, max_chunk_bytes=16 << 10)
    state[changed] = state[changed] + 1.0
    data = save_checkpoint(state, tmp_path / "model_round_2.pth")
    r2 = engine.ingest(tmp_path / "model_round_2.pth", writer_store, max_chunk_bytes=16 << 10)
    changed_bytes = state[changed].numel() * 4
    largest_chunk = max(
        sum(
            (end - start) * 4
            for ranges in json.loads(ref.parts_info).values()
            for start, end, _shape in ranges
        )
        for ref in writer_store.round_chunks(2)
    )
    assert r2.chunks == r1.chunks
    assert changed_bytes <= r2.bytes_new <= changed_bytes + 2 * largest_chunk
    assert r2.bytes_new < r1.bytes_new / 2
    assert engine.restore(writer_store, 2) == data


def test_identical_chunks_within_one_round_are_stored_once(tmp_path, writer_store, db_path, engine):
    state = {f"zeros{i}": torch.zeros(1000) for i in range(4)}
    path = tmp_path / "model_round_1.pth"
    data = save_checkpoint(state, path)
    result = engine.ingest(path, writer_store, chunk_num=4)
    assert (result.chunks, result.chunks_new, result.bytes_new) == (4, 1, 4000)
    assert engine.fingerprint(db_path).chunk_rows == 1
    assert len({ref.chunk_hash for ref in writer_store.round_chunks(1)}) == 1
    assert engine.restore(writer_store, 1) == data


# -- one writer, atomic rounds ---------------------------------------------------------------------


def test_second_writer_is_refused_while_the_first_is_open(tmp_path, db_path, engine):
    first = ChunkStore.open_writer(db_path)
    try:
        with pytest.raises(BusyError, match="another writer"):
            ChunkStore.open_writer(db_path)
        # the refused open did not disturb the first writer
        path = tmp_path / "model_round_1.pth"
        data = save_checkpoint({"w": random_tensor(torch.float32, (32,), 1)}, path)
        assert engine.ingest(path, first).outcome == "ingested"
        with pytest.raises(BusyError):
            ChunkStore.open_writer(db_path)
    finally:
        first.close()
    with ChunkStore.open_writer(db_path) as again:
        assert engine.restore(again, 1) == data


def test_reader_sees_nothing_of_an_uncommitted_round(
    tmp_path, writer_store, db_path, engine, hooked_pool
):
    first = save_checkpoint(mlp_state(0), tmp_path / "model_round_1.pth")
    engine.ingest(tmp_path / "model_round_1.pth", writer_store, max_chunk_bytes=8 << 10)
    save_checkpoint(mlp_state(100), tmp_path / "model_round_2.pth")
    seen: list[tuple[list[int], int, bytes]] = []

    def peek(call: int) -> None:
        if call in (1, 10, 20):  # before the first chunk is stored, and twice while they are
            with ChunkStore.open_reader(db_path) as reader:
                seen.append(
                    (reader.round_numbers(), len(reader.round_chunks(2)), engine.restore(reader, 1))
                )

    result = ingest_file(
        tmp_path / "model_round_2.pth",
        writer_store,
        engine.options(chunk_num=20, max_chunk_bytes=8 << 10),
        pool=hooked_pool(peek),
    )
    assert result.outcome == "ingested"
    assert result.chunks >= 20
    assert len(seen) == 3
    for rounds, metadata, restored in seen:
        assert rounds == [1]
        assert metadata == 0
        assert restored == first
    with ChunkStore.open_reader(db_path) as reader:
        assert reader.round_numbers() == [1, 2]
        assert len(reader.round_chunks(2)) == result.chunks


# -- ingest outcomes -------------------------------------------------------------------------------


def test_seen_duplicate_and_replaced(tmp_path, writer_store, db_path, engine):
    path = tmp_path / "model_round_1.pth"
    first = save_checkpoint(mlp_state(0), path)
    assert engine.ingest(path, writer_store).outcome == "ingested"
    before = engine.fingerprint(db_path)

    again = engine.ingest(path, writer_store)
    assert (again.outcome, again.round_num, again.bytes_new) == ("seen", 1, 0)
    assert engine.fingerprint(db_path) == before

    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    touched = engine.ingest(path, writer_store)
    assert (touched.outcome, touched.round_num, touched.bytes_new) == ("duplicate", 1, 0)
    copy_dir = tmp_path / "copy"
    copy_dir.mkdir()
    shutil.copy(path, copy_dir / path.name)
    copied = engine.ingest(copy_dir / path.name, writer_store)
    assert (copied.outcome, copied.round_num) == ("duplicate", 1)
    after = engine.fingerprint(db_path)
    assert (after.rounds, after.chunk_rows, after.metadata_rows) == (
        before.rounds,
        before.chunk_rows,
        before.metadata_rows,
    )
    assert engine.restore(writer_store, 1) == first

    second = save_checkpoint(mlp_state(7), path)
    replaced = engine.ingest(path, writer_store)
    assert (replaced.outcome, replaced.round_num) == ("replaced", 1)
    assert writer_store.round_numbers() == [1]
    assert writer_store.get_round(1).file_sha256 == engine.sha256(second)
    assert engine.restore(writer_store, 1) == second
    assert verify_store(writer_store).ok


def test_a_copy_preserving_size_and_mtime_is_still_read(tmp_path, writer_store, engine):
    """``cp -p`` keeps size and mtime; the ctime still tells the new version from the old."""
    path = tmp_path / "model_round_1.pth"
    save_checkpoint(mlp_state(0), path)
    assert engine.ingest(path, writer_store).outcome == "ingested"
    old = path.stat()
    new = save_checkpoint(mlp_state(3), path)  # same shapes and name: the same size
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (old.st_size, old.st_mtime_ns)
    result = engine.ingest(path, writer_store)
    assert (result.outcome, result.round_num) == ("replaced", 1)  # read, not skipped as seen
    assert engine.restore(writer_store, 1) == new


def test_overwritten_file_without_a_round_number_continues_the_sequence(
    tmp_path, writer_store, engine
):
    path = tmp_path / "checkpoint.pth"
    first = save_checkpoint(mlp_state(0), path)
    assert engine.ingest(path, writer_store).round_num == 1
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    touched = engine.ingest(path, writer_store)
    assert (touched.outcome, touched.round_num) == ("duplicate", 1)
    second = save_checkpoint(mlp_state(1), path)
    result = engine.ingest(path, writer_store)
    assert (result.outcome, result.round_num) == ("ingested", 2)
    assert writer_store.round_numbers() == [1, 2]
    assert engine.restore(writer_store, 1) == first
    assert engine.restore(writer_store, 2) == second


def test_round_from_federatedscope_cur_round(tmp_path, writer_store, engine):
    path = tmp_path / "checkpoint.pth"
    data = save_checkpoint({"cur_round": 42, "model": mlp_state(0)}, path)
    result = engine.ingest(path, writer_store)
    assert result.round_num == 42
    assert engine.restore(writer_store, 42) == data


# -- chunk descriptors -----------------------------------------------------------------------------


def descriptor_state() -> collections.OrderedDict[str, torch.Tensor]:
    """Mixed dtypes, a 0-dim and an empty tensor, tied weights, and a view-only storage."""
    shared = random_tensor(torch.float32, (6, 5), 9)
    return collections.OrderedDict(
        [
            ("embed.weight", random_tensor(torch.float16, (50, 8), 1)),
            ("bn.num_batches_tracked", torch.tensor(3)),
            ("empty", torch.empty(0, 4)),
            ("fc.weight", random_tensor(torch.float32, (40, 20), 2)),
            ("fc.bias", random_tensor(torch.float64, (40,), 3)),
            ("head.weight", random_tensor(torch.bfloat16, (7, 3), 4)),
            ("tied.weight", random_tensor(torch.int8, (33,), 5)),
            ("view.t", shared.t()),
            ("view.row", shared[2]),
        ]
    )


def expected_storages(state) -> list[tuple[str, int, list[int], torch.dtype, bytes]]:
    """(name, numel, shape, dtype, bytes) per non-empty storage, as SPEC.md names them."""
    return [
        ("embed.weight", 400, [50, 8], torch.float16, tensor_bytes(state["embed.weight"])),
        ("bn.num_batches_tracked", 1, [], torch.int64, tensor_bytes(torch.tensor(3))),
        ("fc.weight", 800, [40, 20], torch.float32, tensor_bytes(state["fc.weight"])),
        ("fc.bias", 40, [40], torch.float64, tensor_bytes(state["fc.bias"])),
        ("head.weight", 21, [7, 3], torch.bfloat16, tensor_bytes(state["head.weight"])),
        ("tied.weight", 33, [33], torch.int8, tensor_bytes(state["tied.weight"])),
        # a transposed view covers its storage but not in storage order: shape [numel]
        ("view.t", 30, [30], torch.float32, tensor_bytes(state["view.t"].t())),
    ]


def round_rows(engine, db: Path, round_num: int) -> list[tuple[int, str, str, int, str]]:
    return engine.query(
        db,
        "SELECT chunk_id, chunk_hash, parts_info, flat_size, typeof(flat_size)"
        " FROM chunk_metadata WHERE round_num = ? ORDER BY chunk_id",
        (round_num,),
    )


@pytest.mark.parametrize(
    ("chunk_num", "max_chunk_bytes", "compression"),
    [
        (10, 1 << 20, "none"),
        (3, 1 << 20, "auto"),
        (10, 256, "none"),
        (40, 100, "auto"),
        (2000, 1 << 20, "none"),
    ],
)
def test_chunk_descriptors_are_the_seeds(
    tmp_path, writer_store, db_path, engine, chunk_num, max_chunk_bytes, compression
):
    state = descriptor_state()
    state["tied.again"] = state["tied.weight"]
    storages = expected_storages(state)
    total = sum(numel for _n, numel, _s, _d, _b in storages)
    path = tmp_path / "model_round_1.pth"
    save_checkpoint(state, path)
    result = engine.ingest(
        path,
        writer_store,
        chunk_num=chunk_num,
        max_chunk_bytes=max_chunk_bytes,
        compression=compression,
    )
    rows = round_rows(engine, db_path, 1)
    assert result.chunks == len(rows)
    assert [r[0] for r in rows] == list(range(len(rows)))
    assert all(kind == "integer" for *_rest, kind in rows)
    assert sum(r[3] for r in rows) == total
    assert len(rows) >= min(chunk_num, total)
    total_bytes = sum(len(b) for *_rest, b in storages)
    if max_chunk_bytes >= total_bytes:
        assert len(rows) == min(chunk_num, total)
        sizes = [r[3] for r in rows]
        assert max(sizes) - min(sizes) <= 1

    # parts walk the flat index in order, each storage from 0 to its numel, never empty
    info = {name: (numel, shape, dtype) for name, numel, shape, dtype, _b in storages}
    walked: list[tuple[str, int, int]] = []
    for _cid, _hash, parts_info, flat_size, _kind in rows:
        parts = json.loads(parts_info)
        assert isinstance(parts, dict) and parts
        chunk_bytes = 0
        elements = 0
        for name, ranges in parts.items():
            for start, end, shape in ranges:
                assert 0 <= start < end <= info[name][0]
                assert shape == info[name][1], name
                walked.append((name, start, end))
                elements += end - start
                chunk_bytes += (end - start) * itemsize(info[name][2])
        assert elements == flat_size >= 1
        assert chunk_bytes <= max_chunk_bytes
    position = {name: 0 for name in info}
    order = [name for name, *_rest in storages]
    last_storage = 0
    for name, start, end in walked:
        assert start == position[name]
        assert order.index(name) >= last_storage
        last_storage = order.index(name)
        position[name] = end
    assert position == {name: numel for name, (numel, _s, _d) in info.items()}


@pytest.mark.parametrize("compression", ["none", "auto"])
def test_database_alone_rebuilds_the_tensors_from_descriptors(
    tmp_path, writer_store, db_path, engine, compression
):
    """What a seed-style reader does: SQL, parts_info and the chunk bytes, nothing else."""
    state = descriptor_state()
    path = tmp_path / "model_round_1.pth"
    save_checkpoint(state, path)
    engine.ingest(path, writer_store, chunk_num=6, max_chunk_bytes=700, compression=compression)
    storages = expected_storages(state)
    width = {name: itemsize(dtype) for name, _n, _s, dtype, _b in storages}
    rebuilt = {name: bytearray(len(raw)) for name, *_rest, raw in storages}
    for _cid, chunk_hash, parts_info, _size, _kind in round_rows(engine, db_path, 1):
        [(codec_name, stored, raw_size)] = engine.query(
            db_path,
            "SELECT codec, data, raw_size FROM chunk_data WHERE chunk_hash = ?",
            (chunk_hash,),
        )
        raw = codec.decode(codec_name, stored, raw_size)
        if compression == "none":
            assert codec_name == codec.CODEC_RAW and stored == raw  # never pickled
        assert hashlib.sha256(raw).hexdigest() == chunk_hash
        pos = 0
        for name, ranges in json.loads(parts_info).items():
            for start, end, _shape in ranges:
                n = (end - start) * width[name]
                rebuilt[name][start * width[name] : start * width[name] + n] = raw[pos : pos + n]
                pos += n
        assert pos == len(raw)
    for name, *_rest, raw in storages:
        assert bytes(rebuilt[name]) == raw, name


def test_every_stored_chunk_is_named_by_the_sha256_of_its_raw_bytes(
    tmp_path, writer_store, db_path, engine
):
    save_checkpoint(mlp_state(), tmp_path / "model_round_1.pth")
    engine.ingest(tmp_path / "model_round_1.pth", writer_store, chunk_num=8, compression="auto")
    rows = engine.query(db_path, "SELECT chunk_hash, codec, data, raw_size FROM chunk_data")
    assert len(rows) == 8
    for chunk_hash, codec_name, stored, raw_size in rows:
        raw = codec.decode(codec_name, stored, raw_size)
        assert len(raw) == raw_size
        assert hashlib.sha256(raw).hexdigest() == chunk_hash
        assert chunk_hash == chunk_hash.lower() and len(chunk_hash) == 64
