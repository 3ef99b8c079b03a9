"""``python -m benchmarks.many_clients --clients N`` (issue 20): one daemon, N client directories.

Each client directory holds one small real ``torch.save`` round (``model_round_1.pth``) when the
daemon starts; once every one is ingested, round 2 is written to all of them as fast as this
process can (open, write, close, as ``torch.save`` does). Measured beside issue 20's targets:

* every file of both rounds ingested once: ``checkpoint.ingested`` lines per path in the daemon's
  JSON log, and afterwards the rounds in each client's database (read after the daemon stopped);
* burst files/s of round 2: N / (last ``checkpoint.ingested`` timestamp - first write);
* daemon threads (``/proc/PID/task``), open fds (``/proc/PID/fd``), ``RssAnon``, after both
  rounds;
* idle CPU afterwards: utime + stime over ``--idle`` seconds / wall, as % of one core;
* ``status``, ``list --client ID`` and ``list`` wall time through the CLI;
* the start-up scan: ``Popen`` to the ``daemon.ready`` line.

The daemon runs the product defaults (schedules included: ``retention_interval`` 60 s,
``rescan_interval`` 300 s) with only the watch root, socket and JSON log set, no root needed.
Everything is bounded by ``--timeout``: a stuck daemon yields partial figures and a missed
target, never a hang (``make bench`` runs this in a child process killed as a group).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from benchmarks.chunkd_daemon import DaemonRun, Event, _parse_ts
from benchmarks.memory import read_status_kib, wait_for
from benchmarks.runner import REPO_ROOT, child_env

Result = dict[str, object]

#: issue 20's targets (2 cores, 10,000 clients)
BURST_MIN = 200.0
THREADS_MAX = 64
FDS_MAX = 1024
RSS_MAX_KIB = 256 * 1024
IDLE_CPU_MAX = 2.0
QUICK_CLI_MAX_S = 1.0
LIST_MAX_S = 10.0
STARTUP_MAX_S = 60.0


def client_id(i: int) -> str:
    return f"c{i:05d}"


def round_bytes(torch: object, client: int, round_num: int) -> bytes:
    """A small real checkpoint (about 1.5 KB): a tiny state dict, distinct per client and round."""
    gen = torch.Generator().manual_seed(client * 7919 + round_num)  # type: ignore[attr-defined]
    state = {
        "fc.weight": torch.randn(8, 16, generator=gen),  # type: ignore[attr-defined]
        "fc.bias": torch.randn(8, generator=gen),  # type: ignore[attr-defined]
        "round": round_num,
    }
    buf = io.BytesIO()
    torch.save(state, buf)  # type: ignore[attr-defined]
    return buf.getvalue()


class TailedDaemon(DaemonRun):
    """:class:`DaemonRun` whose log is read incrementally: at 10,000 clients the JSON log grows
    to megabytes, and re-reading it every 5 ms would take the CPU the daemon is measured on."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.client_dir.rmdir()  # DaemonRun's own client; this benchmark makes its own
        # The product defaults, schedules included: only where to watch, listen and log.
        self.metrics_addr = f"127.0.0.1:{_free_port()}"
        self.config.write_text(
            f"watch_root = {json.dumps(str(self.watch_root))}\n"
            f"socket = {json.dumps(str(self.socket))}\n"
            'log_format = "json"\nlog_level = "info"\n'
            f"metrics_addr = {json.dumps(self.metrics_addr)}\n"  # scraped after the CLI calls
        )
        self._offset = 0
        self._partial = b""
        self.counts: Counter[str] = Counter()
        self.ingested: dict[str, list[Event]] = {}  # path -> its checkpoint.ingested lines
        self.failures: list[Event] = []
        self.ready: Event | None = None

    def poll(self) -> None:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            name = str(event.get("event"))
            self.counts[name] += 1
            if name == "checkpoint.ingested":
                self.ingested.setdefault(str(event.get("path")), []).append(event)
            elif name in ("checkpoint.rejected", "ingest.failed"):
                self.failures.append(event)
            elif name == "daemon.ready" and self.ready is None:
                self.ready = event

    def wait_event(self, predicate: Callable[[Event], bool], timeout_s: float) -> Event:
        # Only daemon.ready is waited on through DaemonRun.start.
        def check() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}")
            self.poll()
            return self.ready is not None and predicate(self.ready)

        if not wait_for(check, timeout_s, poll_s=0.05):
            raise TimeoutError(f"no daemon.ready within {timeout_s:.0f}s")
        assert self.ready is not None
        return self.ready

    def wait_ingested(self, paths: Iterable[Path], deadline: float) -> int:
        """Wait until every path has a ``checkpoint.ingested`` line (or the deadline); how many."""
        wanted = [str(p) for p in paths]

        def done() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}")
            self.poll()
            return all(p in self.ingested for p in wanted)

        wait_for(done, max(0.0, deadline - time.monotonic()), poll_s=0.2)
        return sum(1 for p in wanted if p in self.ingested)


def _timed_cli(daemon: DaemonRun, *args: str, timeout_s: float) -> Result:
    started = time.perf_counter()
    try:
        proc = daemon.cli(*args, timeout_s=timeout_s)
    except subprocess.TimeoutExpired:
        return {"seconds": None, "error": f"timed out after {timeout_s:.0f}s"}
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        return {"seconds": seconds, "error": f"exit {proc.returncode}: {proc.stderr[-300:]}"}
    return {"seconds": seconds, "stdout_bytes": len(proc.stdout)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _timed_scrapes(addr: str, times: int = 3) -> Result:
    """``GET /metrics`` ``times`` times: wall time of each, and the series and bytes served."""
    seconds, text = [], b""
    for _ in range(times):
        started = time.perf_counter()
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=60) as answer:
            text = answer.read()
        seconds.append(time.perf_counter() - started)
    series = [line for line in text.splitlines() if line and not line.startswith(b"#")]
    return {"seconds": seconds, "series": len(series), "bytes": len(text)}


def _process_figures(pid: int) -> Result:
    return {
        "threads": len(os.listdir(f"/proc/{pid}/task")),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "rss_anon_kib": read_status_kib(pid).get("RssAnon", 0),
    }


def _database_rounds(watch_root: Path, n: int) -> Result:
    """Rounds in each client's database, read after the daemon stopped."""
    from chunkd.store import ChunkStore

    complete, missing, other = 0, 0, Counter[str]()
    for i in range(n):
        cid = client_id(i)
        db = watch_root / f"client_{cid}" / f"client_{cid}_chunks.db"
        if not db.exists():
            missing += 1
            continue
        with ChunkStore.open_reader(db) as store:
            stored = list(store.round_numbers())
        if stored == [1, 2]:
            complete += 1
        else:
            other[str(stored)] += 1
    return {"complete": complete, "missing_db": missing, "other": dict(other.most_common(5))}


def run(work: Path, clients: int, timeout_s: float, idle_s: float = 60.0) -> Result:
    """The whole measurement; partial figures (never a hang) when the daemon falls behind."""
    import torch

    deadline = time.monotonic() + timeout_s
    result: Result = {"clients": clients, "timeout_s": timeout_s, "idle_s": idle_s}
    daemon = TailedDaemon(work / "many")
    dirs = [daemon.watch_root / f"client_{client_id(i)}" for i in range(clients)]
    first = [d / "model_round_1.pth" for d in dirs]
    second = [d / "model_round_2.pth" for d in dirs]
    started = time.perf_counter()
    for i, (d, path) in enumerate(zip(dirs, first, strict=True)):
        d.mkdir(parents=True)
        path.write_bytes(round_bytes(torch, i, 1))
    payloads = [round_bytes(torch, i, 2) for i in range(clients)]
    result["file_bytes"] = len(payloads[0])
    result["prepare_s"] = time.perf_counter() - started
    os.sync()
    try:
        started = time.perf_counter()
        daemon.start(timeout_s=max(1.0, deadline - time.monotonic()))
        result["startup_to_ready_s"] = time.perf_counter() - started
        result["pid"] = daemon.pid
        got = daemon.wait_ingested(first, deadline)
        result["round1_ingested"] = got
        result["round1_done_s"] = time.perf_counter() - started
        if got == clients:
            written_at = time.time()
            for path, data in zip(second, payloads, strict=True):
                with open(path, "wb") as f:
                    f.write(data)
            result["round2_write_s"] = time.time() - written_at
            got2 = daemon.wait_ingested(second, deadline)
            result["round2_ingested"] = got2
            stamps = [
                _parse_ts(daemon.ingested[str(p)][0]["timestamp"])
                for p in second
                if str(p) in daemon.ingested
            ]
            if stamps:
                result["burst_files_per_s"] = len(stamps) / max(1e-6, max(stamps) - written_at)
        result["ingested_twice"] = sum(1 for e in daemon.ingested.values() if len(e) > 1)
        result["failures"] = daemon.failures[:5]
        result["failure_count"] = len(daemon.failures)
        result["after_rounds"] = _process_figures(daemon.pid)
        if deadline - time.monotonic() > idle_s + 30:
            result["idle_cpu"] = daemon.idle_cpu(idle_s)
        cli_timeout = max(5.0, min(120.0, deadline - time.monotonic()))
        result["cli"] = {
            "status": _timed_cli(daemon, "status", timeout_s=cli_timeout),
            "list_client": _timed_cli(
                daemon, "list", "--client", client_id(0), timeout_s=cli_timeout
            ),
            "list": _timed_cli(daemon, "list", timeout_s=cli_timeout),
        }
        result["after_cli"] = _process_figures(daemon.pid)
        result["metrics"] = _timed_scrapes(daemon.metrics_addr)
        daemon.poll()
    except (TimeoutError, RuntimeError) as e:
        result["error"] = f"{type(e).__name__}: {e}"
        if daemon.proc is not None and daemon.proc.poll() is None:
            result["at_timeout"] = _process_figures(daemon.pid)  # how a stuck daemon looked
        daemon.poll()
        for key, paths in (("round1_ingested", first), ("round2_ingested", second)):
            result.setdefault(key, sum(1 for p in paths if str(p) in daemon.ingested))
    finally:
        result["exit_code"] = daemon.stop()
        daemon.poll()
        result["events"] = dict(daemon.counts.most_common(20))
    result["databases"] = _database_rounds(daemon.watch_root, clients)
    result["elapsed_s"] = timeout_s - (deadline - time.monotonic())
    return result


def run_child(work: Path, clients: int, timeout_s: float, idle_s: float) -> Result:
    """:func:`run` in a child process in its own process group, killed whole past the timeout
    (its daemon with it): what ``make bench`` calls, so nothing here can hang the run."""
    out = work / "many_clients.json"
    argv = [sys.executable, "-m", "benchmarks.many_clients", "--clients", str(clients)]
    argv += ["--timeout", str(timeout_s), "--idle", str(idle_s), "--work", str(work)]
    argv += ["--json", str(out)]
    proc = subprocess.Popen(
        argv, cwd=REPO_ROOT, env=child_env(), stdout=subprocess.DEVNULL, start_new_session=True
    )
    try:
        proc.wait(timeout=timeout_s + 240)  # + stopping the daemon and counting the databases
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return {"clients": clients, "error": f"killed after {timeout_s + 240:.0f}s"}
    if not out.exists():
        return {"clients": clients, "error": f"exited {proc.returncode} with no result"}
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.many_clients", description=__doc__.splitlines()[0]
    )
    p.add_argument("--clients", type=int, default=10_000)
    p.add_argument("--timeout", type=float, default=900.0, help="seconds for the whole run")
    p.add_argument("--idle", type=float, default=60.0, help="seconds of idle CPU measured")
    p.add_argument("--work", type=Path, default=None, help="scratch directory (default: /tmp)")
    p.add_argument("--json", type=Path, default=None, help="write the raw figures here")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="chunkd-many-", dir=args.work or "/tmp"))
    try:
        result = run(work, args.clients, args.timeout, args.idle)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=1, default=str)
    if args.json:
        args.json.write_text(text)
    from benchmarks.many_clients_report import render

    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
