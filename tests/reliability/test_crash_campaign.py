"""Crash campaign: SIGKILL ``chunkd serve`` at random moments of ingest, retention and vacuum.

One *trial* is: feed the running daemon a random schedule of checkpoint writes (new rounds,
rewrites of a round, atomic renames and in-place writes, several clients), SIGKILL it at a moment
chosen by one of three kill modes, restart it, wait until it has caught up, and check:

* ``verify_store`` finds nothing wrong in any database (every chunk re-hashed, every round
  rebuilt), checked inside a read snapshot while the daemon keeps running;
* every listed round restores byte-identical to the file that was fed for it, and holds nothing
  that was never fed; the ``chunk_keep_rounds`` newest fed rounds of each client are all there;
* every file on disk has its ``sources`` row (the daemon took it), none was rejected, and no
  file version was logged ``checkpoint.ingested`` twice across all the restarts (exactly once).

Kill modes: ``random`` (a uniform delay after feeding starts), ``ingest`` (just after the daemon
detects a fed file: inside its ingest), ``write`` (as soon as a database's rollback journal
appears: inside a write transaction, i.e. a chunk batch, a round commit, a retention delete, an
orphan removal or an incremental vacuum), and ``sigterm`` (a clean stop at a random moment, which
must exit 0 within 60 s). Retention runs every 0.3 s with a small ``chunk_keep_rounds``, so
prunes and vacuums are always in progress somewhere. Every fourth episode runs with
``delete_after_ingest = true``: a file may vanish only once its round is stored.

Trials run in episodes that share one watch root (5 in CI, 10 with ``--torture``); each
episode ends with ``chunkd verify --db`` on every database and a clean SIGTERM stop.
``CHUNKD_CRASH_SEED`` replays a campaign.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from chunkd.ingest import IngestOptions, ingest_file
from chunkd.prune import prune_store
from chunkd.store import ChunkStore

from .conftest import (
    DaemonProcess,
    LogTail,
    model_bytes,
    query,
    restore_bytes,
    round_shas,
    run_cli,
    sha256,
    snapshot,
    verify_db,
    write_atomic,
    write_direct,
)

pytestmark = [pytest.mark.slow, pytest.mark.torture]

#: Tensor bytes of the checkpoint pool: tiny to more than one 32 MiB chunk batch.
POOL_NBYTES = (12 << 10, 48 << 10, 200 << 10, 900 << 10, 3 << 20, 7 << 20, 15 << 20, 36 << 20)
CLIENTS = ("a", "b", "c")
KILL_MODES = ("random", "ingest", "write", "sigterm")
SETTLE_TIMEOUT_S = 90.0
OK_OUTCOMES = {"ingested", "replaced", "duplicate"}


@dataclass
class Episode:
    """One watch root, one daemon, several kill-restart trials."""

    root: Path
    rng: random.Random
    keep: int
    delete_after_ingest: bool = False
    daemon: DaemonProcess = field(init=False)
    #: path -> (client, round, sha256) of the version on disk now
    files: dict[Path, tuple[str, int, str]] = field(default_factory=dict)
    #: every sha256 ever fed per (client, round)
    fed: dict[tuple[str, int], set[str]] = field(default_factory=dict)
    next_round: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        rng = self.rng
        self.root.mkdir(parents=True, exist_ok=True)
        self.daemon = DaemonProcess(
            self.root,
            {
                "settle_delay": "0.05s",
                "retention_interval": "0.3s",
                "rescan_interval": "1s",
                "chunk_keep_rounds": self.keep,
                "compression": rng.choice(["none", "auto"]),
                "max_chunk_bytes": rng.choice(["256KiB", "1MiB"]),
                "chunk_num": rng.choice([4, 10]),
                "delete_after_ingest": self.delete_after_ingest,
            },
        )
        self.daemon.watch_root.mkdir(parents=True, exist_ok=True)
        self.next_round = {c: 1 for c in CLIENTS}

    def expected(self, client: str) -> dict[int, str]:
        """round -> sha256 of the version on disk now, for ``client``."""
        return {r: s for c, r, s in self.files.values() if c == client}


@dataclass
class KillReport:
    mode: str
    delay_s: float = 0.0
    hot_journals: int = 0
    ingest_in_flight: bool = False
    #: for ``sigterm``: the exit status (must be 0) and how long the stop took
    exit_code: int | None = None
    stop_s: float = 0.0


def open_transactions(episode: Episode) -> int:
    """Databases whose rollback journal has content: a write transaction is under way (or, after
    a kill, was cut short: a hot journal the next open rolls back). An empty journal is what
    ``journal_mode=TRUNCATE`` leaves after a commit."""
    count = 0
    for c in CLIENTS:
        with contextlib.suppress(FileNotFoundError):
            count += Path(f"{episode.daemon.db(c)}-journal").stat().st_size > 0
    return count


def killer(episode: Episode, mode: str, feed_done: threading.Event, report: KillReport) -> None:
    """Wait for the moment ``mode`` picks, then SIGKILL the daemon (``sigterm``: stop it)."""
    rng = episode.rng
    daemon = episode.daemon
    assert daemon.proc is not None
    tail = LogTail(daemon.log_path)
    started = time.monotonic()
    give_up = started + 4.0
    detected: set[str] = set()
    finished: set[str] = set()
    if mode in ("random", "sigterm"):
        time.sleep(rng.uniform(0.0, 1.2))
    elif mode == "ingest":
        while time.monotonic() < give_up or not feed_done.is_set():
            for e in tail.new_events():
                if e.get("event") == "checkpoint.detected":
                    detected.add(str(e.get("path")))
            if detected:
                time.sleep(rng.uniform(0.05, 0.2))  # the settle delay, then into the ingest
                break
            time.sleep(0.005)
    else:  # "write": inside a write transaction of any database (its journal has content)
        while time.monotonic() < give_up or not feed_done.is_set():
            if open_transactions(episode):
                time.sleep(rng.uniform(0.0, 0.004))
                break
            time.sleep(0.0005)
    report.delay_s = time.monotonic() - started
    if mode == "sigterm":  # a clean stop in the middle of the work: finish or abandon, exit 0
        os.kill(daemon.proc.pid, signal.SIGTERM)
        try:
            report.exit_code = daemon.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            report.exit_code = -1
        report.stop_s = time.monotonic() - started - report.delay_s
    if daemon.proc.poll() is None:
        os.kill(daemon.proc.pid, signal.SIGKILL)
    daemon.proc.wait()
    report.hot_journals = open_transactions(episode)
    for e in tail.new_events():
        if e.get("event") == "checkpoint.detected":
            detected.add(str(e.get("path")))
        elif e.get("event") in ("checkpoint.ingested", "checkpoint.duplicate"):
            finished.add(str(e.get("path")))
    report.ingest_in_flight = bool(detected - finished)


def feed(episode: Episode, pool: list[bytes]) -> int:
    """A random schedule of checkpoint writes; returns how many files were written."""
    rng = episode.rng
    written = 0
    for _ in range(rng.randint(1, 5)):
        client = rng.choice(CLIENTS)
        mine = sorted((r, p) for p, (c, r, _s) in episode.files.items() if c == client)
        data = pool[rng.randrange(len(pool))]
        fed_before = episode.fed.get((client, mine[-1][0]), set()) if mine else set()
        fresh = [d for d in pool if sha256(d) not in fed_before]
        if mine and fresh and rng.random() < 0.12:
            # new content for the client's newest round (a client rewriting its checkpoint);
            # never content this round had before, so each version is told apart by its hash
            round_num, path = mine[-1]
            data = rng.choice(fresh)
            time.sleep(0.02)  # a different mtime even where the size is the same
        else:
            round_num = episode.next_round[client]
            episode.next_round[client] += rng.choice((1, 1, 1, 2))
            path = episode.daemon.watch_root / f"client_{client}" / f"model_round_{round_num}.pth"
        digest = sha256(data)
        if rng.random() < 0.7:
            write_atomic(path, data)
        else:
            write_direct(path, data, pieces=rng.randint(1, 4))
        episode.files[path] = (client, round_num, digest)
        episode.fed.setdefault((client, round_num), set()).add(digest)
        written += 1
        time.sleep(rng.uniform(0.0, 0.08))
    return written


def settled(episode: Episode) -> tuple[bool, list[str]]:
    """Every file on disk taken (its ``sources`` row matches it); problems found meanwhile."""
    problems = []
    done = True
    for client in CLIENTS:
        mine = [p for p, (c, _r, _s) in episode.files.items() if c == client]
        if not mine:
            continue
        db = episode.daemon.db(client)
        if not db.exists():
            return False, []
        try:
            rows = {
                path: (size, mtime, outcome, digest)
                for path, size, mtime, outcome, digest in query(
                    db, "SELECT path, size, mtime_ns, outcome, file_sha256 FROM sources"
                )
            }
        except sqlite3.Error:  # the schema may not exist yet on a brand-new database
            return False, []
        for path in mine:
            row = rows.get(str(path))
            try:
                st = path.stat()
            except FileNotFoundError:  # delete_after_ingest: gone only once stored and verified
                if not episode.delete_after_ingest:
                    problems.append(f"{path.name} of client {client} vanished")
                elif row is None or row[3] != episode.files[path][2]:
                    problems.append(f"{path.name} of client {client} deleted but not stored")
                continue
            if row is None or row[:2] != (st.st_size, st.st_mtime_ns):
                done = False
            elif row[2] not in OK_OUTCOMES:
                problems.append(f"{path.name} of client {client}: outcome {row[2]!r}")
    return done and not problems, problems


def wait_settled(episode: Episode) -> list[str]:
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        done, problems = settled(episode)
        if done or problems:
            return problems
        proc = episode.daemon.proc
        if proc is not None and proc.poll() is not None:
            return [f"daemon exited with {proc.returncode} before catching up"]
        if time.monotonic() > deadline:
            return [f"not every file was taken within {SETTLE_TIMEOUT_S} s"]
        time.sleep(0.05)


def check(episode: Episode, stats: Counter[str]) -> list[str]:
    """The invariants of the module docstring; a list of violations (empty: all hold)."""
    failures: list[str] = []
    daemon = episode.daemon
    if daemon.proc is None or daemon.proc.poll() is not None:
        failures.append("daemon is not running")
    for client in CLIENTS:
        expected = episode.expected(client)
        if not expected:
            continue
        db = daemon.db(client)
        with snapshot(db):
            report = verify_db(db)
            if not report.ok:
                failures.append(f"client {client}: verify: {report.problems}")
            stored = round_shas(db)
            for round_num, digest in stored.items():
                if digest not in episode.fed.get((client, round_num), set()):
                    failures.append(f"client {client} round {round_num}: content never fed")
                elif round_num in expected and digest != expected[round_num]:
                    failures.append(f"client {client} round {round_num}: stale content")
                restored = sha256(restore_bytes(db, round_num))
                stats["restores_checked"] += 1
                if restored != digest:
                    failures.append(f"client {client} round {round_num}: restore differs")
            for round_num in sorted(expected)[-episode.keep :]:
                if round_num not in stored:
                    failures.append(f"client {client}: newest round {round_num} is missing")
        stats["rounds_checked"] += len(stored)
    counts = Counter(
        (e.get("client"), e.get("round"), e.get("sha256"))
        for e in daemon.events()
        if e.get("event") == "checkpoint.ingested"
    )
    for (client, round_num, digest), n in counts.items():
        if n > 1:
            failures.append(
                f"client {client} round {round_num} ({str(digest)[:12]}): ingested {n} times"
            )
    return failures


def run_episode(
    episode: Episode, pool: list[bytes], trials: int, stats: Counter[str]
) -> list[dict[str, Any]]:
    failures: list[dict[str, Any]] = []
    daemon = episode.daemon
    daemon.start()
    for trial in range(trials):
        mode = episode.rng.choice(KILL_MODES)
        report = KillReport(mode)
        feed_done = threading.Event()
        thread = threading.Thread(target=killer, args=(episode, mode, feed_done, report))
        thread.start()
        stats["files_fed"] += feed(episode, pool)
        feed_done.set()
        thread.join()
        daemon.stop(signal.SIGKILL)
        stats[f"kills_{mode}"] += 1
        stats["kills_with_hot_journal"] += report.hot_journals > 0
        stats["kills_with_ingest_in_flight"] += report.ingest_in_flight
        stats["trials_delete_after_ingest"] += episode.delete_after_ingest
        sigterm_problems = []
        if mode == "sigterm":
            stats["sigterm_stop_max_ms"] = max(
                stats["sigterm_stop_max_ms"], round(report.stop_s * 1000)
            )
            if report.exit_code != 0:
                sigterm_problems.append(f"SIGTERM: exit status {report.exit_code}")
        daemon.start()
        problems = wait_settled(episode)
        if not problems:
            problems = check(episode, stats)
        problems = sigterm_problems + problems
        stats["trials"] += 1
        if problems:
            failures.append({"trial": trial, "kill": report.__dict__, "problems": problems})
    # the episode's end: the offline CLI agrees, and a clean stop exits 0
    for client in CLIENTS:
        db = daemon.db(client)
        if db.exists():
            done = run_cli("verify", "--db", str(db))
            stats["cli_verify_runs"] += 1
            if done.returncode != 0:
                failures.append({"cli_verify": str(db), "stderr": done.stderr.decode()[-500:]})
    code = daemon.stop(signal.SIGTERM)
    if code != 0:
        failures.append({"sigterm_exit": code})
    events = daemon.events()
    stats["prunes_removing_rounds"] += sum(
        1 for e in events if e.get("event") == "retention.pruned" and e.get("rounds_removed")
    )
    stats["rounds_replaced"] += sum(1 for e in events if e.get("event") == "round.replaced")
    stats["duplicates_after_restart"] += sum(
        1 for e in events if e.get("event") == "checkpoint.duplicate"
    )
    return failures


@pytest.fixture(scope="module")
def pool() -> list[bytes]:
    return [
        model_bytes(seed, nbytes, frozen_bytes=nbytes // 2)
        for seed, nbytes in enumerate(POOL_NBYTES, start=1)
    ]


def test_sigkill_campaign(tmp_path: Path, torture: bool, figures, pool: list[bytes]) -> None:
    trials = 500 if torture else 20
    per_episode = 10 if torture else 5
    seed = int(os.environ.get("CHUNKD_CRASH_SEED", random.randrange(1 << 30)))
    stats: Counter[str] = Counter()
    failures: list[dict[str, Any]] = []
    started = time.monotonic()
    episodes = -(-trials // per_episode)
    for n in range(episodes):
        rng = random.Random(seed + n)
        root = tmp_path / f"ep{n}"
        episode = Episode(root, rng, keep=rng.choice((2, 3, 4)), delete_after_ingest=n % 4 == 3)
        try:
            found = run_episode(episode, pool, min(per_episode, trials - n * per_episode), stats)
        finally:
            if episode.daemon.proc is not None and episode.daemon.proc.poll() is None:
                episode.daemon.proc.kill()
                episode.daemon.proc.wait()
        for failure in found:
            failure.update(episode=n, root=str(root))
        failures.extend(found)
        if not found:
            shutil.rmtree(root, ignore_errors=True)
    figures.update(
        seed=seed,
        trials=stats["trials"],
        failures=len(failures),
        duration_s=round(time.monotonic() - started, 1),
        **{k: v for k, v in sorted(stats.items()) if k != "trials"},
    )
    figures["failure_details"] = failures[:20]
    figures.save()
    assert stats["trials"] == trials
    assert not failures, json.dumps(failures[:5], indent=2, default=str)


class _Killed(BaseException):
    """Stands for SIGKILL at one exact point: nothing after it runs."""


def test_round_and_its_source_row_commit_together(tmp_path: Path) -> None:
    """The campaign's exactly-once check at the one moment random kills rarely hit: the end of
    an ingest. The round and its file's ``sources`` row must be one transaction; otherwise a
    kill between them makes a restarted daemon take the file again, and a round that retention
    pruned comes back. A trigger makes the ``sources`` insert fail: the round must go with it."""
    files = {r: tmp_path / f"model_round_{r}.pth" for r in (1, 2, 3)}
    for r, path in files.items():
        write_atomic(path, model_bytes(r, 64 << 10))
    db = tmp_path / "client_1_chunks.db"
    ChunkStore.open_writer(db).close()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute(
            "CREATE TRIGGER killed BEFORE INSERT ON sources"
            " BEGIN SELECT RAISE(ABORT, 'killed'); END"
        )
        conn.commit()
    with ChunkStore.open_writer(db) as store, pytest.raises(Exception, match="killed"):
        ingest_file(files[1], store, IngestOptions())
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("DROP TRIGGER killed")
        conn.commit()
    with ChunkStore.open_writer(db) as store:
        assert store.round_numbers() == []  # neither the round nor its source row
        assert store.orphan_chunk_count() == 0
        for r in (1, 2, 3):
            assert ingest_file(files[r], store, IngestOptions()).outcome == "ingested"
        assert {path for path, _ in _source_rows(db)} == {str(p) for p in files.values()}
        prune_store(store, 2)
        again = ingest_file(files[1], store, IngestOptions())
        assert again.outcome in ("seen", "duplicate"), again.outcome
        assert store.round_numbers() == [2, 3]


def _source_rows(db: Path) -> list[tuple[str, int]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT path, round_num FROM sources").fetchall()
