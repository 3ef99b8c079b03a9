"""The daemon end to end: a real process, real inotify events, real files and signals."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from chunkd.store import ChunkStore
from chunkd.verify import verify_store
from tests.daemon.checkpoints import restored_bytes, save_model

pytestmark = pytest.mark.slow

INGEST_FIELDS = {
    "client",
    "round",
    "path",
    "bytes_in",
    "chunks",
    "chunks_new",
    "bytes_new",
    "dedup_ratio",
    "duration_ms",
    "mb_per_s",
}


def test_files_present_before_start_and_written_after(make_daemon):
    daemon = make_daemon(start=False)
    before = save_model(daemon.watch_root / "client_1" / "model_round_1.pth", 1)
    daemon.start()
    daemon.wait_event(lambda e: e["event"] == "checkpoint.ingested" and e.get("round") == 1)
    # direct write, then write-to-temp + rename
    direct = save_model(daemon.watch_root / "client_1" / "model_round_2.pth", 2)
    tmp = daemon.watch_root / "client_1" / "model_round_3.pth.tmp"
    renamed = save_model(tmp, 3)
    tmp.rename(tmp.with_suffix(""))
    daemon.wait_event(lambda e: e["event"] == "checkpoint.ingested", count=3)
    assert daemon.rounds("1") == [1, 2, 3]
    for round_num, content in ((1, before), (2, direct), (3, renamed)):
        assert restored_bytes(daemon.db("1"), round_num) == content
    assert daemon.stop() == 0


def test_slow_writer_is_taken_only_when_complete(make_daemon):
    daemon = make_daemon()
    content = save_model(daemon.root / "staging.pth", 7, elements=200_000)
    target = daemon.watch_root / "client_1" / "model_round_7.pth"
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as f:
        f.write(content[: len(content) // 2])
        f.flush()
        time.sleep(2.0)
        f.write(content[len(content) // 2 :])
    daemon.wait_event(lambda e: e["event"] == "checkpoint.ingested" and e.get("round") == 7)
    assert restored_bytes(daemon.db("1"), 7) == content
    rejected = [e for e in daemon.events() if e["event"] == "checkpoint.rejected"]
    assert rejected == []
    assert target.read_bytes() == content  # never modified


def test_overwritten_checkpoint_each_round_and_new_client_dir(make_daemon):
    daemon = make_daemon()
    path = daemon.watch_root / "client_a" / "checkpoint.pth"
    contents = []
    for r in range(1, 4):
        contents.append(save_model(path, 100 + r, round_num=r))
        daemon.wait_event(
            lambda e, r=r: (
                e["event"] == "checkpoint.ingested"
                and e.get("client") == "a"
                and e.get("round") == r
            )
        )
    # No number in the name and none in the file: the next sequence number.
    plain = daemon.watch_root / "client_b" / "checkpoint.pth"
    for _ in range(2):
        contents.append(save_model(plain, int.from_bytes(os.urandom(2), "little")))
        daemon.wait_event(
            lambda e: e["event"] == "checkpoint.ingested" and e.get("client") == "b",
            count=len(contents) - 3,
        )
    assert daemon.rounds("a") == [1, 2, 3]
    assert daemon.rounds("b") == [1, 2]
    for r in range(1, 4):
        assert restored_bytes(daemon.db("a"), r) == contents[r - 1]
    # a touch of the same content is a duplicate, not a new round
    os.utime(plain)
    daemon.wait_event(lambda e: e["event"] == "checkpoint.duplicate" and e.get("client") == "b")
    assert daemon.rounds("b") == [1, 2]


def test_many_clients_concurrently_each_round_exactly_once(make_daemon):
    daemon = make_daemon()
    clients, rounds = 20, 5
    expected: dict[tuple[str, int], bytes] = {}
    lock = threading.Lock()

    def client(i: int) -> None:
        for r in range(1, rounds + 1):
            content = save_model(
                daemon.watch_root / f"client_{i}" / f"model_round_{r}.pth",
                i * 100 + r,
                elements=2048,
            )
            with lock:
                expected[(str(i), r)] = content

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    daemon.wait_event(
        lambda e: e["event"] == "checkpoint.ingested", count=clients * rounds, timeout_s=120
    )
    time.sleep(1.0)  # nothing more may arrive: exactly once
    seen = [(e["client"], e["round"]) for e in daemon.ingested()]
    assert sorted(seen) == sorted(expected)
    for (client_id, r), content in expected.items():
        assert restored_bytes(daemon.db(client_id), r) == content


def test_retention_runs_on_schedule(make_daemon):
    daemon = make_daemon(chunk_keep_rounds=2, retention_interval="1s")
    # One at a time: the round committed last is never removed by retention (SPEC), so five
    # files written at once and taken in another order may rightly keep a late round 3.
    for r in range(1, 6):
        save_model(daemon.watch_root / "client_1" / f"model_round_{r}.pth", r)
        daemon.wait_event(lambda e: e["event"] == "checkpoint.ingested", count=r)
    daemon.wait_event(
        lambda e: e["event"] == "retention.pruned" and e.get("rounds_removed"), timeout_s=10
    )
    deadline = time.monotonic() + 10
    while daemon.rounds("1") != [4, 5] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert daemon.rounds("1") == [4, 5]


def test_every_line_is_json_with_the_fields(make_daemon):
    daemon = make_daemon()
    save_model(daemon.watch_root / "client_1" / "model_round_1.pth", 1)
    (daemon.watch_root / "client_1" / "broken_round_2.pth").write_bytes(b"not a checkpoint")
    daemon.wait_event(lambda e: e["event"] == "checkpoint.ingested")
    daemon.wait_event(lambda e: e["event"] == "checkpoint.rejected", timeout_s=60)
    assert daemon.stop() == 0
    events = daemon.events()
    assert events, "no log lines"
    for e in events:
        assert e["event"] != "<not json>", e
        assert {"timestamp", "level", "event"} <= set(e)
        assert str(e["timestamp"]).endswith("Z")
    ingested = daemon.ingested()[0]
    assert set(ingested) >= INGEST_FIELDS
    assert ingested["bytes_in"] == os.path.getsize(
        daemon.watch_root / "client_1" / "model_round_1.pth"
    )
    names = [e["event"] for e in events]
    for name in (
        "daemon.started",
        "daemon.ready",
        "client.added",
        "daemon.stopping",
        "daemon.stopped",
    ):
        assert name in names
    rejected = next(e for e in events if e["event"] == "checkpoint.rejected")
    assert rejected["error"] and rejected["path"].endswith("broken_round_2.pth")


def big_checkpoint(path: Path, mib: int) -> bytes:
    torch.save({f"w{i}": torch.randn(1 << 18) for i in range(mib)}, path)
    return path.read_bytes()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_signal_during_ingest_leaves_a_consistent_database(make_daemon, sig):
    daemon = make_daemon()
    staging = daemon.root / "big.pth"
    content = big_checkpoint(staging, 96)
    target = daemon.watch_root / "client_1" / "model_round_1.pth"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, target)
    daemon.wait_event(lambda e: e["event"] == "checkpoint.detected", timeout_s=10)
    time.sleep(0.3 + 0.08)  # the settle delay, then a 96 MiB ingest is under way
    code = daemon.stop(sig)
    if sig == signal.SIGTERM:
        assert code == 0
    with ChunkStore.open_writer(daemon.db("1")) as store:
        assert verify_store(store).ok
        committed = store.round_numbers()
        assert committed in ([], [1])
    # after a restart the file is ingested (or was already) and everything verifies
    daemon.start()
    if not committed:
        daemon.wait_event(lambda e: e["event"] == "checkpoint.ingested", timeout_s=60)
    assert daemon.stop() == 0
    assert restored_bytes(daemon.db("1"), 1) == content
    with ChunkStore.open_reader(daemon.db("1")) as store:
        assert verify_store(store).ok
        assert store.orphan_chunk_count() == 0
    assert hashlib.sha256(target.read_bytes()).hexdigest() == hashlib.sha256(content).hexdigest()


def test_bad_config_exits_naming_the_key(tmp_path):
    import subprocess
    import sys

    config = tmp_path / "bad.toml"
    config.write_text('chunk_num = 0\nwatch_root = "fl"\n')
    result = subprocess.run(
        [sys.executable, "-m", "chunkd.cli.main", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 78
    assert "chunk_num" in result.stderr
    config.write_text("chunk_nmu = 3\n")
    result = subprocess.run(
        [sys.executable, "-m", "chunkd.cli.main", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 78
    assert "chunk_nmu" in result.stderr


def test_second_daemon_refuses_to_start(make_daemon, tmp_path):
    first = make_daemon()
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "chunkd.cli.main", "serve", "--config", str(first.config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert (
        "another chunkd" in (result.stderr + result.stdout).lower()
        or "busy" in (result.stderr + result.stdout).lower()
    )
    assert first.proc.poll() is None  # the first one is unharmed


def test_delete_after_ingest_removes_only_verified_files(make_daemon):
    daemon = make_daemon(delete_after_ingest=True)
    path = daemon.watch_root / "client_1" / "model_round_1.pth"
    content = save_model(path, 1)
    daemon.wait_event(lambda e: e["event"] == "checkpoint.deleted")
    assert not path.exists()
    assert restored_bytes(daemon.db("1"), 1) == content
    # a file that is not a checkpoint is rejected and left where it is
    bad = daemon.watch_root / "client_1" / "model_round_2.pth"
    bad.write_bytes(b"garbage that is not a zip")
    daemon.wait_event(lambda e: e["event"] == "checkpoint.rejected", timeout_s=60)
    assert bad.read_bytes() == b"garbage that is not a zip"
