"""Load and soak: many clients, many rounds, with restores and listings running all the while.

``--torture``: 50 clients x 20 rounds of a 5 MiB model (CI: 10 x 5 x 1 MiB). Clients write their
rounds in step, as FL clients do, keeping at most two rounds in flight and deleting their own
files three rounds later (as a client that keeps its last few checkpoints). Half of each model
is a frozen backbone, so rounds share chunks. Meanwhile two threads restore each client's latest
ingested round through the socket and check its SHA-256, and one thread lists all clients and
asks for the status, in loops. Retention keeps 5 rounds, on a 2 s schedule.

Checked: every round ingested exactly once; every restore byte-identical; the stored rounds at the
end are the newest five of each client and restore byte-identical; ``verify`` is clean. Reported:
request latency (p50/p99/max per command), ingest duration p99, and the daemon's RSS at start,
after the first round, after each round and at the end. Memory must stay within its design
bound (one SQLite page cache per client lane plus a fixed overhead) and, in the full run, flat
over the last quarter of the rounds.
"""

from __future__ import annotations

import io
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from chunkd.ingest import IngestOptions, ingest_file
from chunkd.restore import restore_round
from chunkd.store import CACHE_KIB, ChunkStore

from .conftest import (
    LogTail,
    model_bytes,
    percentile,
    query,
    request,
    restore_bytes,
    rss_kib,
    sha256,
    verify_db,
    wait_for,
    write_atomic,
)

pytestmark = [pytest.mark.slow, pytest.mark.torture]

KEEP = 5


class Load:
    """The request loops and what they measured."""

    def __init__(self, socket_path: Path, expected: dict[tuple[str, int], str]) -> None:
        self.socket = socket_path
        self.expected = expected
        self.latest: dict[str, int] = {}
        self.latencies: dict[str, list[float]] = {"restore": [], "list": [], "status": []}
        self.errors: list[str] = []
        self.counts: Counter[str] = Counter()
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def timed(self, cmd: str, body: dict[str, Any]) -> tuple[Any, bytes | None]:
        started = time.monotonic()
        reply, payload = request(self.socket, body, timeout_s=120)
        with self.lock:
            self.latencies[cmd].append(time.monotonic() - started)
        return reply, payload

    def restorer(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop.is_set():
            with self.lock:
                choices = sorted(self.latest.items())
            if not choices:
                time.sleep(0.05)
                continue
            client, round_num = rng.choice(choices)
            body = {"cmd": "restore", "client": client, "round": round_num, "transfer": "frames"}
            reply, payload = self.timed("restore", body)
            if not reply.ok or payload is None:
                self.errors.append(f"restore {client}/{round_num}: {reply.raw[:200]!r}")
            elif sha256(payload) != self.expected[(client, round_num)]:
                self.errors.append(f"restore {client}/{round_num}: WRONG BYTES")
            self.counts["restores"] += 1

    def lister(self) -> None:
        while not self.stop.is_set():
            for cmd in ("list", "status"):
                reply, _ = self.timed(cmd, {"cmd": cmd})
                if not reply.ok:
                    self.errors.append(f"{cmd}: {reply.raw[:200]!r}")
                self.counts[cmd] += 1
            time.sleep(0.05)


class Ingests:
    """``checkpoint.ingested`` lines of the daemon's log, read incrementally (the log is large)."""

    def __init__(self, daemon: Any) -> None:
        self._tail = LogTail(daemon.log_path)
        self._tail.offset = 0
        self.counts: Counter[tuple[str, int]] = Counter()
        self.duration_ms: list[float] = []

    def update(self) -> Counter[tuple[str, int]]:
        for e in self._tail.new_events():
            if e.get("event") == "checkpoint.ingested":
                self.counts[(str(e["client"]), int(e["round"]))] += 1
                self.duration_ms.append(float(e["duration_ms"]))
        return self.counts

    def have(self, clients: list[str], round_num: int) -> bool:
        counts = self.update()
        return all(counts.get((c, round_num)) for c in clients)


def test_soak(tmp_path, daemon_factory, torture, figures):
    clients, rounds, nbytes = (50, 20, 5 << 20) if torture else (10, 5, 1 << 20)
    daemon = daemon_factory(
        settle_delay="0.2s",
        retention_interval="2s",
        rescan_interval="30s",
        chunk_keep_rounds=KEEP,
        log_level="info",
    )
    assert daemon.proc is not None
    pid = daemon.proc.pid
    rss = {"start": rss_kib(pid)}
    samples: list[int] = []
    rss_by_round: list[int] = []
    expected: dict[tuple[str, int], str] = {}
    load = Load(daemon.socket, expected)
    threads = [
        threading.Thread(target=load.restorer, args=(1,)),
        threading.Thread(target=load.restorer, args=(2,)),
        threading.Thread(target=load.lister),
    ]

    def sample_rss() -> None:
        while not load.stop.is_set():
            samples.append(rss_kib(pid))
            time.sleep(0.5)

    threads.append(threading.Thread(target=sample_rss))
    for t in threads:
        t.start()
    started = time.monotonic()
    ids = [f"s{c:02d}" for c in range(clients)]
    ingests = Ingests(daemon)
    try:
        for r in range(1, rounds + 1):
            if r > 2:  # at most two rounds in flight
                wait_for(lambda r=r: ingests.have(ids, r - 2), 600, f"round {r - 2}", 0.2)
            done = ingests.update()
            for c, client in enumerate(ids):
                data = model_bytes(c * 1000 + r, nbytes, frozen_bytes=nbytes // 2)
                path = daemon.watch_root / f"client_{client}" / f"model_round_{r}.pth"
                write_atomic(path, data)
                expected[(client, r)] = sha256(data)
                if r > 3 and done.get((client, r - 3)):
                    path.with_name(f"model_round_{r - 3}.pth").unlink(missing_ok=True)
            with load.lock:
                for client in ids:
                    ready = [n for n in range(1, r + 1) if done.get((client, n))]
                    if ready:
                        load.latest[client] = max(ready)
            if r == 1:
                wait_for(lambda: ingests.have(ids, 1), 600, "round 1", 0.2)
                rss["after_round_1"] = rss_kib(pid)
            rss_by_round.append(rss_kib(pid))
        wait_for(
            lambda: len(ingests.update()) == clients * rounds, 900, "every round ingested", 0.5
        )
        ingest_s = time.monotonic() - started
        time.sleep(3.0)  # the loops keep running over the last rounds and a retention pass
    finally:
        load.stop.set()
        for t in threads:
            t.join()
    rss["end"] = rss_kib(pid)

    counts = ingests.update()
    assert set(counts) == set(expected) and set(counts.values()) == {1}, "not exactly once"
    assert not load.errors, load.errors[:10]
    # the end state: the newest KEEP rounds of each client, byte-identical, verify clean
    wait_for(
        lambda: all(
            query(daemon.db(c), "SELECT COUNT(*) FROM rounds")[0][0] == min(KEEP, rounds)
            for c in ids
        ),
        30,
        "retention to settle",
    )
    checked = 0
    for client in ids:
        db = daemon.db(client)
        stored = [r for (r,) in query(db, "SELECT round_num FROM rounds ORDER BY 1")]
        assert stored == list(range(max(1, rounds - KEEP + 1), rounds + 1)), (client, stored)
        for r in stored:
            assert sha256(restore_bytes(db, r)) == expected[(client, r)]
            checked += 1
    for client in random.Random(3).sample(ids, min(5, clients)):
        assert verify_db(daemon.db(client)).ok
    ingest_ms = ingests.duration_ms
    assert daemon.stop() == 0

    latency = {
        cmd: {
            "n": len(values),
            "p50_ms": round(percentile(values, 0.50) * 1e3, 1),
            "p99_ms": round(percentile(values, 0.99) * 1e3, 1),
            "max_ms": round(max(values, default=0.0) * 1e3, 1),
        }
        for cmd, values in load.latencies.items()
    }
    all_values = [v for values in load.latencies.values() for v in values]
    figures.update(
        clients=clients,
        rounds=rounds,
        model_bytes=nbytes,
        rounds_ingested=len(counts),
        bytes_ingested=clients * rounds * nbytes,
        ingest_wall_s=round(ingest_s, 1),
        ingest_duration_p99_ms=round(percentile(ingest_ms, 0.99), 1),
        requests=dict(load.counts),
        latency=latency,
        p99_request_ms=round(percentile(all_values, 0.99) * 1e3, 1),
        rss_kib=rss,
        rss_kib_by_round=rss_by_round,
        rss_kib_max=max(samples, default=0),
        final_restores_checked=checked,
    )
    figures.save()
    assert load.counts["restores"] > 0 and load.counts["list"] > 0
    # memory is bounded by the number of clients (each lane keeps its writer connection and
    # its SQLite page cache of CACHE_KIB, plus a thread and buffers), not by the rounds or the
    # bytes ingested; measured: ~20 MiB a client at the plateau ...
    assert rss["end"] - rss["start"] <= clients * (CACHE_KIB + (8 << 10)) + (128 << 10), rss
    # ... and flat: over the last quarter of the run, with the caches warm, it does not grow
    if rounds >= 12:
        warm = rss_by_round[3 * len(rss_by_round) // 4]
        assert rss["end"] <= warm * 1.10 + (16 << 10), (rss, rss_by_round)


def test_verify_is_clean_while_retention_runs(tmp_path, daemon_factory, figures):
    """``verify`` reads a store that retention is pruning: it must report only real problems.

    Regression (found by this campaign): verify read rounds and chunks in separate transactions
    without a lease, and reported healthy stores as damaged (exit 5) while retention ran."""
    daemon = daemon_factory(settle_delay="0.05s", retention_interval="0.1s", chunk_keep_rounds=1)
    client_dir = daemon.watch_root / "client_1"
    stop = threading.Event()

    def produce() -> None:
        r = 1
        while not stop.is_set():
            write_atomic(client_dir / f"model_round_{r}.pth", model_bytes(r, 256 << 10))
            r += 1
            time.sleep(0.05)

    producer = threading.Thread(target=produce)
    producer.start()
    verdicts: Counter[str] = Counter()
    problems: list[Any] = []
    try:
        daemon.wait_event(lambda e: e.get("event") == "checkpoint.ingested")
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            reply, _ = request(daemon.socket, {"cmd": "verify", "client": "1"})
            assert reply.ok, reply.raw
            entry = reply.obj["result"]["clients"][0]
            verdicts["ok" if entry["ok"] else "problems"] += 1
            if not entry["ok"]:
                problems.append(entry["problems"])
    finally:
        stop.set()
        producer.join()
    figures.update(verifies=dict(verdicts), first_problems=problems[:3])
    figures.save()
    assert not problems, problems[:3]


def test_restore_while_its_round_is_replaced(tmp_path, daemon_factory, figures):
    """A client rewrites one round again and again while it is restored in a loop: each restore
    is one complete version, byte for byte, or an error; never a mix returned as a success."""
    daemon = daemon_factory(settle_delay="0.05s")
    path = daemon.watch_root / "client_1" / "model_round_1.pth"
    versions: dict[str, int] = {}
    stop = threading.Event()

    def rewrite() -> None:
        seed = 0
        while not stop.is_set():
            seed += 1
            data = model_bytes(seed, 2 << 20, frozen_bytes=1 << 20)
            versions[sha256(data)] = seed
            write_atomic(path, data)
            time.sleep(0.15)

    writer = threading.Thread(target=rewrite)
    writer.start()
    outcomes: Counter[str] = Counter()
    wrong: list[str] = []
    try:
        daemon.wait_event(lambda e: e.get("event") == "checkpoint.ingested")
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            reply, payload = request(
                daemon.socket, {"cmd": "restore", "client": "1", "round": 1, "transfer": "frames"}
            )
            if payload is None:
                outcomes[f"error:{reply.code}"] += 1
            elif sha256(payload) in versions:
                outcomes["complete_version"] += 1
            else:
                wrong.append(sha256(payload))
    finally:
        stop.set()
        writer.join()
    replaced = sum(1 for e in daemon.events() if e.get("event") == "round.replaced")
    figures.update(restores=dict(outcomes), wrong_bytes=len(wrong), replacements=replaced)
    figures.save()
    assert not wrong, "a restore returned bytes that are no version of the round"
    assert outcomes["complete_version"] > 0 and replaced > 0
    # Occasional "error:integrity" answers here are the race pinned down deterministically by
    # test_restore_racing_a_replacement_returns_one_version below.


def test_restore_racing_a_replacement_returns_one_version(tmp_path):
    """The interleaving of the daemon-level loop above, made deterministic: the replacement
    tries to commit exactly between the restore's read of the layout and of the chunk list.
    The restore reads both in one snapshot, so it returns one whole version; the writer
    commits once the snapshot ends."""
    path = tmp_path / "model_round_1.pth"  # a rerun rewrites the same file: a new generation
    first_bytes = model_bytes(1, 256 << 10, frozen_bytes=128 << 10)
    second_bytes = model_bytes(2, 256 << 10, frozen_bytes=128 << 10)
    write_atomic(path, first_bytes)
    db = tmp_path / "client_1_chunks.db"
    with ChunkStore.open_writer(db) as writer:
        ingest_file(path, writer, IngestOptions())
        write_atomic(path, second_bytes)
        second = path
        reader = ChunkStore.open_reader(db)
        chunk_list = reader.round_chunks
        replacement = threading.Thread(target=ingest_file, args=(second, writer, IngestOptions()))

        def replaced_first(round_num: int, generation: int | None = None) -> Any:
            replacement.start()  # commits round 1 = second as soon as it can
            time.sleep(0.5)
            return chunk_list(round_num, generation)

        reader.round_chunks = replaced_first  # type: ignore[method-assign]
        out = io.BytesIO()
        try:
            restore_round(reader, 1, out.write)
        finally:
            reader.close()
        replacement.join(timeout=60)
        assert writer.get_round(1).file_sha256 == sha256(second_bytes)
        assert writer.get_round(1, generation=0).file_sha256 == sha256(first_bytes)
    assert out.getvalue() in (first_bytes, second_bytes)
