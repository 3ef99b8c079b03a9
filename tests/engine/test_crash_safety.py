"""SIGKILL during ingest: the database opens, verifies clean, and the round is all there or absent.

A child process ingests a ~64 MiB checkpoint (more than one batch of chunk bytes, so some
transactions commit before the round does) and is killed at random moments. Afterwards:

* the database opens for writing (no stale lock) and ``verify_store`` finds no problem;
* the round that was being written is either fully present (and restores byte-identical) or
  absent; the round stored before it is untouched;
* no chunk bytes are left that no round references, once a writer has opened the database;
* a fresh ingest of the same file works.
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from strategies import payload_range, random_tensor, save_checkpoint

from chunkd.errors import CrcMismatchError
from chunkd.ingest import IngestOptions, ingest_file
from chunkd.store import ChunkStore
from chunkd.verify import verify_store

CHILD = textwrap.dedent(
    """
    import sys
    from chunkd.ingest import IngestOptions, ingest_file
    from chunkd.store import ChunkStore

    db, path, compression = sys.argv[1:4]
    store = ChunkStore.open_writer(db)
    print("ready", flush=True)
    result = ingest_file(path, store, IngestOptions(chunk_num=10, max_chunk_bytes=1 << 20,
                                                    compression=compression))
    store.close()
    print("done", result.outcome, result.round_num, flush=True)
    """
)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, object]:
    """A small round 1 in a database, a ~64 MiB round 2 to ingest and kill, and how long the
    child takes to ingest it undisturbed (so kills land inside the ingest on any machine)."""
    directory = tmp_path_factory.mktemp("crash")
    small = directory / "model_round_1.pth"
    save_checkpoint({"w": random_tensor(torch.float32, (1000,), 1)}, small)
    big = directory / "model_round_2.pth"
    generator = torch.Generator().manual_seed(2)
    state = {f"layer{i}.weight": torch.randn(2 << 20, generator=generator) for i in range(8)}
    state["bn.num_batches_tracked"] = torch.tensor(5)
    save_checkpoint(state, big)
    assert big.stat().st_size >= 64 << 20
    base = directory / "base.db"
    with ChunkStore.open_writer(base) as store:
        ingest_file(small, store, IngestOptions())
    calibration = directory / "calibration.db"
    shutil.copy(base, calibration)
    output, ingest_s = run_and_kill(calibration, big, "none", delay_s=None)
    assert "done ingested 2" in output
    return {"small": small, "big": big, "base": base, "ingest_s": ingest_s}


def run_and_kill(
    db: Path, path: Path, compression: str, delay_s: float | None
) -> tuple[str, float]:
    """Start the child; once it has opened the store, SIGKILL it ``delay_s`` later (None: let it
    finish). Returns what it printed, and the seconds from "ready" to its end."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db), str(path), compression],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready", child.communicate()[1]
        ready = time.monotonic()
        if delay_s is not None:
            time.sleep(delay_s)
            child.send_signal(signal.SIGKILL)
        out, err = child.communicate(timeout=60)
        assert delay_s is not None or child.returncode == 0, err
        return out, time.monotonic() - ready
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


# Kill moments as fractions of an undisturbed ingest: reading and the first batch of chunk bytes,
# the batch commit, the round's commit, and just after it.
TRIALS = [
    (0.05, "none"),
    (0.25, "none"),
    (0.5, "none"),
    (0.7, "none"),
    (0.9, "none"),
    (1.1, "none"),
    (0.6, "auto"),
]


@pytest.mark.parametrize(("fraction", "compression"), TRIALS)
def test_sigkill_during_ingest_leaves_a_consistent_database(
    tmp_path, engine, checkpoints, fraction, compression
):
    rng = random.Random(f"{fraction}-{compression}")
    delay_s = fraction * rng.uniform(0.85, 1.15) * checkpoints["ingest_s"]
    db = tmp_path / "client_1_chunks.db"
    shutil.copy(checkpoints["base"], db)
    small, big = checkpoints["small"].read_bytes(), checkpoints["big"]
    output, _seconds = run_and_kill(db, big, compression, delay_s)

    with ChunkStore.open_writer(db) as store:  # the killed writer's lock is gone
        assert engine.orphan_chunks(db) == 0  # the new writer removed what the crash left
        report = verify_store(store)
        assert report.ok, report.problems
        rounds = store.round_numbers()
        assert rounds in ([1], [1, 2]), rounds
        if "done" in output:
            assert rounds == [1, 2]
        assert engine.restore(store, 1) == small
        if rounds == [1, 2]:
            assert engine.sha256(engine.restore(store, 2)) == engine.sha256(big)
        again = engine.ingest(big, store, compression=compression)
        # present: the file is known ("seen" once its source row committed too) or a duplicate
        expected = ("duplicate", "seen") if rounds == [1, 2] else ("ingested",)
        assert again.outcome in expected
        assert again.round_num == 2
        assert store.round_numbers() == [1, 2]
        assert engine.sha256(engine.restore(store, 2)) == engine.sha256(big)
        assert verify_store(store).ok


def test_damage_found_after_a_batch_commit_leaves_no_rows(tmp_path, engine, checkpoints):
    """A CRC mismatch in the last storage is found only after more than one batch of chunk bytes
    was committed; the failed ingest takes them all back out."""
    db = tmp_path / "client_1_chunks.db"
    shutil.copy(checkpoints["base"], db)
    data = bytearray(checkpoints["big"].read_bytes())
    _start, end = payload_range(bytes(data), "data/7")
    data[end - 1] ^= 0x01
    bad = tmp_path / "model_round_2.pth"
    bad.write_bytes(bytes(data))
    before = engine.fingerprint(db)
    with ChunkStore.open_writer(db) as store:
        with pytest.raises(CrcMismatchError):
            engine.ingest(bad, store)
        after = engine.fingerprint(db)
        assert (after.rounds, after.chunk_rows, after.metadata_rows) == (
            before.rounds,
            before.chunk_rows,
            before.metadata_rows,
        )
        assert engine.orphan_chunks(db) == 0
        assert verify_store(store).ok


# A writer killed in the middle of a transaction that has spilled pages into the database file
# (more chunk bytes than the page cache holds, fewer than a batch): it leaves a hot journal.
SPILL_CHILD = textwrap.dedent(
    """
    import hashlib, os, sys, time
    from chunkd.store import ChunkStore

    store = ChunkStore.open_writer(sys.argv[1])
    # chunkd's writer never spills (cache_spill=OFF); force a spill here so that dirty pages
    # reach the file mid-transaction, as a crash inside a commit would leave them
    store._conn.execute("PRAGMA cache_spill=ON")
    store._conn.execute("PRAGMA cache_size=-1024")
    writer = store.begin_round()
    for _ in range(6):
        data = os.urandom(1 << 20)
        writer.add_chunk(hashlib.sha256(data).hexdigest(), "raw", data, len(data))
    print("mid-transaction", flush=True)
    time.sleep(60)
    """
)


def kill_mid_transaction(db: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", SPILL_CHILD, str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "mid-transaction", child.communicate()[1]
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    journal = db.with_name(db.name + "-journal")
    assert journal.exists() and journal.stat().st_size > 0  # a hot journal is left behind


def test_writer_rolls_back_a_hot_journal(tmp_path, engine, checkpoints):
    db = tmp_path / "client_1_chunks.db"
    shutil.copy(checkpoints["base"], db)
    before = engine.fingerprint(db)
    kill_mid_transaction(db)
    with ChunkStore.open_writer(db) as store:
        assert store.round_numbers() == [1]
        assert engine.restore(store, 1) == checkpoints["small"].read_bytes()
        assert verify_store(store).ok
    after = engine.fingerprint(db)
    assert (after.rounds, after.chunk_rows, after.metadata_rows) == (
        before.rounds,
        before.chunk_rows,
        before.metadata_rows,
    )


def test_reader_opens_after_a_writer_died_mid_transaction(tmp_path, engine, checkpoints):
    db = tmp_path / "client_1_chunks.db"
    shutil.copy(checkpoints["base"], db)
    kill_mid_transaction(db)
    with ChunkStore.open_reader(db) as reader:
        assert reader.round_numbers() == [1]
        assert engine.restore(reader, 1) == checkpoints["small"].read_bytes()
