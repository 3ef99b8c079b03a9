"""Damage made with sqlite3 directly: verify names the round and chunk, restore refuses."""

from __future__ import annotations

import collections
import io
import json
import sqlite3

import pytest
import torch
import zstandard
from strategies import random_tensor, save_checkpoint

from chunkd.errors import IntegrityError
from chunkd.restore import restore_round
from chunkd.store import ChunkStore
from chunkd.verify import verify_store


def state(seed: int, head_seed: int | None = None) -> collections.OrderedDict[str, torch.Tensor]:
    return collections.OrderedDict(
        [
            ("body.weight", random_tensor(torch.float32, (64, 64), seed)),
            (
                "head.weight",
                random_tensor(torch.float32, (10, 64), seed if head_seed is None else head_seed),
            ),
        ]
    )


@pytest.fixture(params=["none", "auto"])
def stored(request, tmp_path, db_path, engine):
    """Rounds 1 and 2 share their body chunks; round 3 shares nothing. Closed: the test opens."""
    files = {}
    with ChunkStore.open_writer(db_path) as store:
        for round_num, st in ((1, state(0, 1)), (2, state(0, 2)), (3, state(9))):
            path = tmp_path / f"model_round_{round_num}.pth"
            files[round_num] = save_checkpoint(st, path)
            engine.ingest(path, store, chunk_num=6, compression=request.param)
        assert verify_store(store).ok
    return files


def damage(db_path, sql: str, params: tuple[object, ...] = ()) -> int:
    conn = sqlite3.connect(db_path)
    try:
        with conn:
            return conn.execute(sql, params).rowcount
    finally:
        conn.close()


def chunk_hash_of(engine, db_path, round_num: int, chunk_id: int) -> str:
    return engine.query(
        db_path,
        "SELECT chunk_hash FROM chunk_metadata WHERE round_num = ? AND chunk_id = ?",
        (round_num, chunk_id),
    )[0][0]


def assert_restore_refused(store: ChunkStore, round_num: int, match: str) -> None:
    """Restore raises, and does not return (no success is reported for wrong bytes)."""
    outcome = []
    with pytest.raises(IntegrityError, match=match):
        outcome.append(restore_round(store, round_num, io.BytesIO().write))
    assert outcome == []


def flip_stored_byte(engine, db_path, chunk_hash: str) -> None:
    [(data,)] = engine.query(
        db_path, "SELECT data FROM chunk_data WHERE chunk_hash = ?", (chunk_hash,)
    )
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0x01
    assert (
        damage(
            db_path, "UPDATE chunk_data SET data = ? WHERE chunk_hash = ?", (bytes(bad), chunk_hash)
        )
        == 1
    )


def test_corrupt_chunk_is_reported_with_its_round_and_chunk(stored, db_path, engine):
    bad_hash = chunk_hash_of(engine, db_path, 3, 2)
    flip_stored_byte(engine, db_path, bad_hash)
    with ChunkStore.open_reader(db_path) as store:
        report = verify_store(store)
        assert not report.ok
        assert report.rounds_checked == 3
        located = {(p.round_num, p.chunk_id) for p in report.problems if p.chunk_id is not None}
        assert located == {(3, 2)}
        assert all(p.round_num == 3 for p in report.problems)
        assert any(p.chunk_hash == bad_hash for p in report.problems)
        assert_restore_refused(store, 3, "round 3 chunk 2")
        # the other rounds are intact
        assert engine.restore(store, 1) == stored[1]
        assert engine.restore(store, 2) == stored[2]


def test_corrupt_shared_chunk_is_reported_for_every_round_using_it(stored, db_path, engine):
    shared = chunk_hash_of(engine, db_path, 1, 0)
    assert shared == chunk_hash_of(engine, db_path, 2, 0)
    flip_stored_byte(engine, db_path, shared)
    with ChunkStore.open_reader(db_path) as store:
        report = verify_store(store)
        assert {(p.round_num, p.chunk_id) for p in report.problems} == {(1, 0), (2, 0)}
        assert_restore_refused(store, 1, "chunk 0")
        assert_restore_refused(store, 2, "chunk 0")
        assert engine.restore(store, 3) == stored[3]


def test_chunk_replaced_by_other_valid_bytes(stored, db_path, engine):
    """Bytes that decode fine but are not the chunk: only the hash can tell."""
    victim = chunk_hash_of(engine, db_path, 1, 5)  # the head chunk, only round 1 uses it
    other = chunk_hash_of(engine, db_path, 3, 5)
    damage(
        db_path,
        "UPDATE chunk_data SET data = (SELECT data FROM chunk_data WHERE chunk_hash"
        " = ?), codec = (SELECT codec FROM chunk_data WHERE chunk_hash = ?) WHERE chunk_hash = ?",
        (other, other, victim),
    )
    with ChunkStore.open_reader(db_path) as store:
        report = verify_store(store)
        assert {(p.round_num, p.chunk_id) for p in report.problems} == {(1, 5)}
        assert_restore_refused(store, 1, "round 1 chunk 5")


def test_missing_chunk_bytes(stored, db_path, engine):
    victim = chunk_hash_of(engine, db_path, 3, 4)
    assert damage(db_path, "DELETE FROM chunk_data WHERE chunk_hash = ?", (victim,)) == 1
    with ChunkStore.open_reader(db_path) as store:
        report = verify_store(store)
        assert [(p.round_num, p.chunk_id) for p in report.problems] == [(3, 4)]
        assert "not stored" in report.problems[0].what
        assert_restore_refused(store, 3, victim)


def test_missing_chunk_row(stored, db_path, engine):
    damage(db_path, "DELETE FROM chunk_metadata WHERE round_num = 3 AND chunk_id = 3")
    with ChunkStore.open_reader(db_path) as store:
        report = verify_store(store)
        assert [p.round_num for p in report.problems] == [3]
        assert_restore_refused(store, 3, "chunk 3 is missing")


def test_damaged_parts_info(stored, db_path, engine):
    damage(
        db_path,
        "UPDATE chunk_metadata SET parts_info = '{\"body.weight\": [[0, 1]]}'"
        " WHERE round_num = 2 AND chunk_id = 1",
    )
    with ChunkStore.open_reader(db_path) as store:
        report = verify_store(store)
        assert [p.round_num for p in report.problems] == [2]
        assert_restore_refused(store, 2, "round 2")


def layout_of(engine, db_path, round_num: int) -> dict:
    return json.loads(
        engine.query(db_path, "SELECT layout FROM rounds WHERE round_num = ?", (round_num,))[0][0]
    )


def set_layout(db_path, round_num: int, layout: dict | str) -> None:
    text = layout if isinstance(layout, str) else json.dumps(layout)
    damage(db_path, "UPDATE rounds SET layout = ? WHERE round_num = ?", (text, round_num))


def residue_of(engine, db_path, round_num: int) -> bytes:
    [(packed,)] = engine.query(
        db_path, "SELECT residue FROM rounds WHERE round_num = ?", (round_num,)
    )
    return zstandard.ZstdDecompressor().decompress(packed)


@pytest.mark.parametrize(
    "how",
    [
        "residue byte flipped",
        "residue not zstd",
        "residue shortened",
        "layout not json",
        "layout json null",
        "layout sha256",
        "layout segment swapped",
        "layout storage itemsize",
        "layout file size",
    ],
)
def test_damaged_round_layout_or_residue(stored, db_path, engine, how):
    layout = layout_of(engine, db_path, 2)
    residue = residue_of(engine, db_path, 2)
    packed = None
    if how == "residue byte flipped":
        bad = bytearray(residue)
        bad[len(bad) // 3] ^= 0x20
        packed = zstandard.ZstdCompressor().compress(bytes(bad))
    elif how == "residue not zstd":
        packed = b"definitely not a zstd frame"
    elif how == "residue shortened":
        packed = zstandard.ZstdCompressor().compress(residue[:-1])
    elif how == "layout not json":
        set_layout(db_path, 2, "{not json")
    elif how == "layout json null":
        set_layout(db_path, 2, "null")
    elif how == "layout sha256":
        layout["file_sha256"] = "0" * 64
        set_layout(db_path, 2, layout)
    elif how == "layout segment swapped":
        segments = layout["segments"]
        i = next(i for i, seg in enumerate(segments) if seg[0] == "s")
        segments[i], segments[i - 1] = segments[i - 1], segments[i]
        set_layout(db_path, 2, layout)
    elif how == "layout storage itemsize":
        layout["storages"][0][3] = 2
        set_layout(db_path, 2, layout)
    elif how == "layout file size":
        layout["file_size"] += 1
        set_layout(db_path, 2, layout)
    if packed is not None:
        damage(db_path, "UPDATE rounds SET residue = ? WHERE round_num = 2", (packed,))
    with ChunkStore.open_reader(db_path) as store:
        report = verify_store(store)
        assert [p.round_num for p in report.problems] == [2]
        assert report.problems[0].what
        assert_restore_refused(store, 2, "round 2")
        assert engine.restore(store, 1) == stored[1]
        assert engine.restore(store, 3) == stored[3]


@pytest.mark.parametrize("segment", [["s", 99], ["s", -1], ["x", 0], ["r", -5]])
def test_layout_segment_that_names_nothing(stored, db_path, engine, segment):
    layout = layout_of(engine, db_path, 2)
    layout["segments"].append(segment)
    set_layout(db_path, 2, layout)
    with ChunkStore.open_reader(db_path) as store:
        report = verify_store(store)
        assert [p.round_num for p in report.problems] == [2]
        assert_restore_refused(store, 2, "round 2")


def test_unreferenced_corrupt_chunk_is_reported(stored, tmp_path, db_path, engine):
    """A chunk no round uses (left by a crash) is still checked, and named by its hash."""
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute(
            "INSERT INTO chunk_data (chunk_hash, data, codec, raw_size) VALUES (?, ?, 'raw', 4)",
            ("ab" * 32, b"\x00\x01\x02\x03"),
        )
    conn.close()
    with ChunkStore.open_reader(db_path) as store:
        report = verify_store(store)
        assert [(p.round_num, p.chunk_hash) for p in report.problems] == [(None, "ab" * 32)]


def test_clean_store_verifies_clean(stored, db_path, engine):
    with ChunkStore.open_reader(db_path) as store:
        report = verify_store(store)
        assert report.ok
        assert report.rounds_checked == 3
        distinct = engine.query(db_path, "SELECT COUNT(DISTINCT chunk_hash) FROM chunk_metadata")
        assert report.chunks_checked == distinct[0][0] == engine.fingerprint(db_path).chunk_rows


@pytest.mark.parametrize("parts_info", ["[]", "null"])
def test_parts_info_that_is_not_an_object(stored, db_path, engine, parts_info):
    damage(
        db_path,
        "UPDATE chunk_metadata SET parts_info = ? WHERE round_num = 2 AND chunk_id = 1",
        (parts_info,),
    )
    with ChunkStore.open_reader(db_path) as store:
        report = verify_store(store)
        assert [p.round_num for p in report.problems] == [2]
        assert_restore_refused(store, 2, "round 2")
