"""Issue 20: the daemon's cost follows the clients that have work, not the number of directories.

A real daemon over hundreds of real client directories: the writer pool stays at its size, open
databases at the store cache's bound, every file is ingested once and each client's rounds in
the order they were written; an idle daemon runs no lane work, and a retention pass over clients
whose rounds did not change opens no database.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from chunkd.daemon.stores import MAX_OPEN_STORES
from chunkd.daemon.writers import WRITERS
from tests.daemon.checkpoints import save_model

from .conftest import request, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.scale]  # hundreds of clients: make integration

CLIENTS = 300
DB_SUFFIXES = (".db", ".db.lock", ".db-journal")


def proc_figures(pid: int) -> dict[str, Any]:
    """Threads, descriptors and memory of a running process, from /proc."""
    tasks = os.listdir(f"/proc/{pid}/task")
    comms = []
    for tid in tasks:
        try:
            comms.append(Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip())
        except OSError:
            continue
    links = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            rss = int(line.split()[1])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return {
        "threads": len(tasks),
        # named by the pool (threads a writer starts inherit its name: count names)
        "writer_threads": len({c for c in comms if c.startswith("chunkd-writer")}),
        "fds": len(links),
        "db_fds": sum(link.endswith(DB_SUFFIXES) for link in links),
        "rss_anon_kib": rss,
        "cpu_ticks": int(fields[11]) + int(fields[12]),  # utime + stime
    }


def writers_status(daemon: Any) -> dict[str, int]:
    reply, _ = request(daemon.socket, {"cmd": "status"})
    assert reply.ok, reply.obj
    return reply.obj["result"]["writers"]


def ingested_count(daemon: Any) -> int:
    return sum(1 for e in daemon.events() if e["event"] == "checkpoint.ingested")


def write_round(root: Path, clients: range, round_num: int) -> None:
    for i in clients:
        save_model(root / f"client_{i}" / f"model_round_{round_num}.pth", i * 10 + round_num)


def test_three_hundred_clients_run_on_a_bounded_writer_pool(daemon_factory, figures) -> None:
    daemon = daemon_factory(start=False, settle_delay="0.3s")
    write_round(daemon.watch_root, range(CLIENTS), 1)  # present at start-up
    daemon.start(wait_ready=False)
    daemon.wait_event(lambda e: e["event"] == "daemon.ready", timeout_s=180)
    pid = daemon.proc.pid
    peak: dict[str, int] = {}

    def sample() -> None:
        for key, value in proc_figures(pid).items():
            peak[key] = max(peak.get(key, 0), value)

    def all_in(count: int) -> bool:
        sample()
        return ingested_count(daemon) >= count

    wait_for(lambda: all_in(CLIENTS), 300, "round 1 of every client", 0.2)
    # then two rounds to every client, close together: each client's must go in in order
    write_round(daemon.watch_root, range(CLIENTS), 2)
    write_round(daemon.watch_root, range(CLIENTS), 3)
    wait_for(lambda: all_in(3 * CLIENTS), 300, "rounds 2 and 3 of every client", 0.2)
    time.sleep(1.0)
    busy = proc_figures(pid)

    events = daemon.events()
    ingested = [e for e in events if e["event"] == "checkpoint.ingested"]
    paths = [e["path"] for e in ingested]
    assert len(paths) == len(set(paths)) == 3 * CLIENTS, "every file ingested exactly once"
    assert not [e for e in events if e["event"] in ("checkpoint.rejected", "ingest.failed")]
    by_client: dict[str, list[int]] = {}
    for e in ingested:
        by_client.setdefault(str(e["client"]), []).append(int(e["round"]))
    assert all(rounds == [1, 2, 3] for rounds in by_client.values()), "write order per client"
    assert len(by_client) == CLIENTS

    # The writers are the pool, whatever the number of clients: no thread per lane. (Until the
    # watcher has one inotify instance, watchdog keeps one emitter thread per client watch: that
    # allowance is the CLIENTS term; lanes used to add CLIENTS more.)
    assert peak["writer_threads"] == WRITERS
    assert peak["threads"] <= CLIENTS + 64, peak
    # Databases and lock files are open only for the clients in the store cache, and for those a
    # writer is opening (evicted once it is in); a journal only inside a write transaction.
    assert peak["db_fds"] <= 2 * (MAX_OPEN_STORES + WRITERS) + WRITERS, peak

    # Idle: no lane is run, nothing is polled per client.
    before = writers_status(daemon)
    idle_from = proc_figures(pid)
    time.sleep(3.0)
    after = writers_status(daemon)
    idle_to = proc_figures(pid)
    assert after["slices"] == before["slices"], (before, after)
    assert after["with_work"] == 0
    assert after["open_databases"] <= MAX_OPEN_STORES
    figures.update(
        clients=CLIENTS,
        peak_threads=peak["threads"],
        peak_fds=peak["fds"],
        peak_db_fds=peak["db_fds"],
        rss_anon_kib=busy["rss_anon_kib"],
        idle_cpu_ticks_per_s=round((idle_to["cpu_ticks"] - idle_from["cpu_ticks"]) / 3.0, 2),
        databases_opened=after["databases_opened"],
    )
    figures.save()
    assert daemon.stop() == 0


def test_a_retention_pass_with_nothing_changed_opens_no_database(daemon_factory) -> None:
    clients = MAX_OPEN_STORES + 16  # more than the cache holds: a pass over all would reopen
    daemon = daemon_factory(start=False, retention_interval="1s", chunk_keep_rounds=1)
    write_round(daemon.watch_root, range(clients), 1)
    daemon.start(wait_ready=False)
    daemon.wait_event(lambda e: e["event"] == "daemon.ready", timeout_s=120)
    wait_for(lambda: ingested_count(daemon) >= clients, 180, "every client's round", 0.2)
    # the first passes prune every client whose rounds changed (all of them), then none
    wait_for(
        lambda: (s := writers_status(daemon))["retention_pending"] == 0 and s["with_work"] == 0,
        60,
        "the first retention passes",
        0.2,
    )
    time.sleep(1.5)
    opened = writers_status(daemon)["databases_opened"]
    time.sleep(3.5)  # three more passes
    assert writers_status(daemon)["databases_opened"] == opened

    # a change is pruned at the next pass: round 2 makes round 1 go (keep 1)
    save_model(daemon.watch_root / "client_3" / "model_round_2.pth", 32)
    daemon.wait_event(lambda e: e["event"] == "retention.pruned" and e.get("client") == "3")
    assert daemon.rounds("3") == [2]
    # an on-demand prune of everything still prunes (and answers for) every client
    reply, _ = request(daemon.socket, {"cmd": "prune", "dry_run": True}, timeout_s=120)
    assert reply.ok, reply.obj
    assert len(reply.obj["result"]["clients"]) == clients
    assert daemon.stop() == 0
