"""chunkd through a real ``chunkd serve`` process: what an operator actually runs.

Each measured checkpoint gets a fresh daemon with a temporary config: one client directory, the
shipped defaults for everything that shapes the store (codec, delta, ``delta_cache``, chunking;
:mod:`benchmarks.configs` names another config only where a figure says so), timers long enough
that no rescan or timed retention lands inside a measurement. The memory figures are per
operation like the library path's:

* ingest: the checkpoint is *renamed* into the client directory (a rename onto the final name is
  a completion signal of docs/SPEC.md "Watching", and costs no copy of 1 GiB); MB/s comes from the
  ``checkpoint.ingested`` line's ``duration_ms``, and the wall time rename -> event is reported
  too (it includes the settle delay);
* restore: ``python -m chunkd.cli.main restore --client ... -o FILE`` (fd passing), timed from
  the CLI's start to its exit, and that wall time minus the CLI's start-up (``--version``,
  median of 3: :func:`cli_startup_s`); the daemon's own ``restore.served`` duration beside it;
* retention (:func:`measure_retention`): a series ingested as a backlog, then round by round,
  each followed by ``chunkd prune`` through the daemon (the retention pass's own code path):
  peak RssAnon over all of it and the database's free pages after every prune;
* memory: a sampler thread reads the daemon's ``RssAnon`` from ``/proc/<pid>/status`` every 10 ms;
* latency: a 10 MiB checkpoint written with open/write/close; close -> the event's timestamp;
* idle CPU: utime + stime from ``/proc/<pid>/stat`` over an idle period.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from benchmarks import configs
from benchmarks.configs import DEFAULT
from benchmarks.memory import PeakSampler, read_cpu_ticks, read_status_kib, wait_for
from benchmarks.runner import REPO_ROOT, child_env

SETTLE_DELAY_S = 1.0
CLIENT = "bench"
Event = dict[str, object]


def unavailable_reason() -> str | None:
    """Why the daemon cannot be benchmarked here, or None."""
    try:
        spec = importlib.util.find_spec("chunkd.cli.main")
    except ImportError as e:
        return f"chunkd.cli.main is not importable ({e})"
    if spec is None:
        return "chunkd.cli.main does not exist yet (the CLI is being written)"
    probe = subprocess.run(
        [sys.executable, "-m", "chunkd.cli.main", "serve", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=child_env(),
        check=False,
        timeout=60,
    )
    if probe.returncode != 0:
        return f"`chunkd serve --help` fails: {probe.stderr.strip()[-300:]}"
    return None


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(str(value))


def _parse_ts(stamp: object) -> float:
    return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()


class DaemonRun:
    """One ``chunkd serve`` with its own watch root, socket, config and JSON log."""

    def __init__(
        self, root: Path, settle_delay_s: float = SETTLE_DELAY_S, config: str = DEFAULT
    ) -> None:
        self.root = root
        self.watch_root = root / "fl"
        self.client_dir = self.watch_root / f"client_{CLIENT}"
        self.socket = root / "run" / "chunkd.sock"
        self.config = root / "chunkd.toml"
        self.log_path = root / "daemon.log"
        settings = {
            "watch_root": str(self.watch_root),
            "socket": str(self.socket),
            "settle_delay": f"{settle_delay_s}s",
            **configs.daemon_keys(config),
            "retention_interval": "3600s",  # retention runs when measured (`chunkd prune`)
            "rescan_interval": "3600s",
            "log_format": "json",
            "log_level": "info",
        }
        root.mkdir(parents=True, exist_ok=True)
        self.client_dir.mkdir(parents=True, exist_ok=True)
        self.config.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in settings.items()))
        self.proc: subprocess.Popen[bytes] | None = None
        self.sampler: PeakSampler | None = None

    def start(self, timeout_s: float = 60) -> DaemonRun:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "chunkd.cli.main", "serve", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                env=child_env(),
            )
        self.wait_event(lambda e: e.get("event") == "daemon.ready", timeout_s)
        self.sampler = PeakSampler(self.proc.pid).start()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def events(self) -> list[Event]:
        out: list[Event] = []
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return out
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def wait_event(self, predicate: Callable[[Event], bool], timeout_s: float) -> Event:
        found: list[Event] = []

        def check() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"daemon exited with {self.proc.returncode}: "
                    f"{self.log_path.read_text()[-2000:]}"
                )
            found[:] = [e for e in self.events() if predicate(e)]
            return bool(found)

        if not wait_for(check, timeout_s, poll_s=0.005):
            raise TimeoutError(
                f"no matching daemon event within {timeout_s}s; last lines: {self.events()[-5:]}"
            )
        return found[0]

    def wait_ingest(self, path: Path, timeout_s: float) -> Event:
        target = str(path.absolute())

        def match(e: Event) -> bool:
            if e.get("path") != target:
                return False
            if e.get("event") in ("checkpoint.rejected", "ingest.failed"):
                raise RuntimeError(f"daemon did not ingest {path}: {e}")
            return e.get("event") == "checkpoint.ingested"

        return self.wait_event(match, timeout_s)

    def cli(self, *args: str, timeout_s: float = 3600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "chunkd.cli.main",
                *args,
                "--config",
                str(self.config),
                "--socket",
                str(self.socket),
            ],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            env=child_env(),
            timeout=timeout_s,
            check=False,
        )

    def idle_cpu(self, seconds: float) -> dict[str, float]:
        hz = os.sysconf("SC_CLK_TCK")
        before = read_cpu_ticks(self.pid)
        started = time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - started
        ticks = read_cpu_ticks(self.pid) - before
        return {
            "seconds": elapsed,
            "cpu_seconds": ticks / hz,
            "percent_of_core": 100.0 * ticks / hz / elapsed,
        }

    def stop(self) -> int | None:
        if self.sampler is not None:
            self.sampler.stop()
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def cli_startup_s() -> float:
    """Wall time of ``chunkd --version``, median of 3: the CLI's interpreter start-up, which a
    restore's wall time includes and a file copy does not."""
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "chunkd.cli.main", "--version"],
            capture_output=True,
            cwd=REPO_ROOT,
            env=child_env(),
            check=True,
            timeout=120,
        )
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def measure_checkpoint(
    root: Path, staged: Path, restore_out: Path, config: str = DEFAULT
) -> dict[str, object]:
    """Ingest ``staged`` through a fresh daemon (moved in and back out), then restore it."""
    daemon = DaemonRun(root, config=config).start()
    assert daemon.sampler is not None
    dest = daemon.client_dir / "model_round_1.pth"
    size = staged.stat().st_size
    expected = _sha256(staged)
    try:
        idle_kib = read_status_kib(daemon.pid).get("RssAnon", 0)
        os.sync()  # as before every measured operation (see benchmarks.runner.run_json)
        daemon.sampler.mark()
        moved_at = time.time()
        os.rename(staged, dest)
        event = daemon.wait_ingest(dest, timeout_s=600)
        ingest_peak = daemon.sampler.window_peak_kib
        after_ingest_kib = read_status_kib(daemon.pid).get("RssAnon", 0)
        duration_s = float(event["duration_ms"]) / 1e3  # type: ignore[arg-type]
        os.sync()
        daemon.sampler.mark()
        started = time.perf_counter()
        proc = daemon.cli("restore", "--client", CLIENT, "--round", "1", "-o", str(restore_out))
        restore_s = time.perf_counter() - started
        startup_s = cli_startup_s()
        restore_peak = daemon.sampler.window_peak_kib
        if proc.returncode != 0:
            raise RuntimeError(f"chunkd restore exited {proc.returncode}: {proc.stderr.strip()}")
        served = [e for e in daemon.events() if e.get("event") == "restore.served"]
        identical = _sha256(restore_out) == expected
    finally:
        if dest.exists():
            os.rename(dest, staged)
        code = daemon.stop()
        restore_out.unlink(missing_ok=True)
    served_ms = float(served[-1]["duration_ms"]) if served else None  # type: ignore[arg-type]
    net_s = max(restore_s - startup_s, 1e-6)
    return {
        "config": config,
        "config_text": configs.describe(config),
        "bytes": size,
        "ingest_seconds": duration_s,
        "ingest_mb_per_s": size / 1e6 / duration_s,
        "ingest_wall_s": _parse_ts(event["timestamp"]) - moved_at,
        "restore_cli_seconds": restore_s,
        "restore_cli_mb_per_s": size / 1e6 / restore_s,
        "cli_startup_s": startup_s,
        "restore_cli_net_mb_per_s": size / 1e6 / net_s,
        "restore_served_ms": served_ms,
        "restore_served_mb_per_s": size / 1e3 / served_ms if served_ms else None,
        "byte_identical": identical,
        "rss_anon_idle_kib": idle_kib,
        "rss_anon_after_ingest_kib": after_ingest_kib,
        "rss_anon_peak_ingest_kib": ingest_peak,
        "rss_anon_peak_restore_kib": restore_peak,
        "exit_code": code,
    }


def measure_idle_and_latency(
    root: Path, small_files: Sequence[Path], idle_s: float
) -> dict[str, object]:
    """Idle CPU of a fresh daemon, then close -> ``checkpoint.ingested`` for small files."""
    daemon = DaemonRun(root).start()
    try:
        idle_start = daemon.idle_cpu(idle_s)
        latencies, seen_latencies, durations = [], [], []
        for i, source in enumerate(small_files, start=1):
            data = source.read_bytes()
            dest = daemon.client_dir / f"model_round_{i}.pth"
            with open(dest, "wb") as f:
                f.write(data)
            closed_at = time.time()
            event = daemon.wait_ingest(dest, timeout_s=60)
            seen_latencies.append(time.time() - closed_at)
            latencies.append(_parse_ts(event["timestamp"]) - closed_at)
            durations.append(float(event["duration_ms"]))  # type: ignore[arg-type]
        idle_after = daemon.idle_cpu(idle_s)
        rss_idle_kib = read_status_kib(daemon.pid).get("RssAnon", 0)
    finally:
        code = daemon.stop()
    return {
        "settle_delay_s": SETTLE_DELAY_S,
        "file_bytes": small_files[0].stat().st_size if small_files else 0,
        "latency_s": latencies,
        "latency_median_s": statistics.median(latencies),
        "latency_max_s": max(latencies),
        "latency_seen_by_poller_s": seen_latencies,
        "ingest_duration_ms": durations,
        "idle_cpu_start": idle_start,
        "idle_cpu_after_work": idle_after,
        "rss_anon_idle_kib": rss_idle_kib,
        "exit_code": code,
    }


def _store_figures(db: Path) -> dict[str, object]:
    from chunkd.store import ChunkStore

    with ChunkStore.open_reader(db) as store:
        stats = store.stats()
        rounds = list(store.round_numbers())
    return {
        "rounds": len(rounds),
        "kept": rounds,
        "db_file_bytes": stats.db_file_bytes,
        "free_bytes": stats.free_bytes,
        "stored_bytes": stats.stored_bytes,
    }


def measure_retention(
    root: Path, files: Sequence[Path], keep: int, backlog: int, config: str = DEFAULT
) -> dict[str, object]:
    """Retention in a real daemon: ``files`` (rounds 1..N, in order) renamed into the client
    directory; the first ``backlog`` ingested before any prune (a daemon that was behind), then
    each further round followed by one. Each prune is ``chunkd prune --client`` with
    ``chunk_keep_rounds = keep``, so it runs the daemon's retention code in the daemon's process
    while the sampler watches. After each prune: the database file, its free pages, and "one
    round" = the largest stored bytes of a kept round as ingested (each is stored whole when it
    arrives; a repeated round stores nothing, so the largest, not the newest)."""
    daemon = DaemonRun(root, config=config)
    with open(daemon.config, "a") as f:
        f.write(f"chunk_keep_rounds = {keep}\n")
    daemon.start()
    assert daemon.sampler is not None
    db = daemon.client_dir / f"client_{CLIENT}_chunks.db"
    moved: list[tuple[Path, Path]] = []
    prunes: list[dict[str, object]] = []
    stored_new: dict[int, int] = {}  # round -> its bytes_new when it was ingested
    try:
        for i, source in enumerate(files, start=1):
            dest = daemon.client_dir / source.name
            os.rename(source, dest)
            moved.append((dest, source))
            event = daemon.wait_ingest(dest, timeout_s=600)
            stored_new[int(event["round"])] = int(event.get("bytes_new", 0))  # type: ignore[call-overload]
            if i < backlog:
                continue
            daemon.sampler.mark()
            started = time.perf_counter()
            proc = daemon.cli("prune", "--client", CLIENT, "--json")
            seconds = time.perf_counter() - started
            if proc.returncode != 0:
                raise RuntimeError(f"chunkd prune exited {proc.returncode}: {proc.stderr.strip()}")
            figures = _store_figures(db)
            kept = figures.pop("kept")
            prunes.append(
                {
                    "after_round": i,
                    "backlog": i == backlog,
                    "seconds": seconds,
                    "rss_anon_peak_kib": daemon.sampler.window_peak_kib,
                    "one_round_bytes": max(stored_new.get(r, 0) for r in kept),  # type: ignore[union-attr]
                    **figures,
                }
            )
        peak = daemon.sampler.peak_kib
    finally:
        for dest, source in moved:
            if dest.exists():
                os.rename(dest, source)
        code = daemon.stop()
    return {
        "config": config,
        "config_text": configs.describe(config),
        "keep": keep,
        "backlog": backlog,
        "rounds": len(files),
        "round_bytes": files[0].stat().st_size if files else 0,
        "prunes": prunes,
        "rss_anon_peak_kib": peak,
        "exit_code": code,
    }
