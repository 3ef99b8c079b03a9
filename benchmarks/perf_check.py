"""Issue 18's two ratios for one codec config at one size, paired run by run (prototype harness).

``python -m benchmarks.perf_check --size 256 --compression auto --delta --rounds 3 --reps 3``

* ingest: a real ``chunkd serve`` (the given codec config), each round renamed into the client
  directory; MB/s from the ``checkpoint.ingested`` line's ``duration_ms``, paired with a raw
  SQLite 1 MiB-blob insert of the same size (65536 B pages, TRUNCATE, synchronous=FULL: the best
  of benchmarks.limits' grid here) run right after it;
* restore: ``python -m chunkd.cli.main restore -o FILE`` wall time minus the CLI's start-up
  (``python -m chunkd.cli.main --version``, median of 3), paired with a user-space copy + fsync
  of the same file: the last round warm (its chunks may be in the ingest cache; ``--skip-warm``
  leaves it out) and, after a daemon restart, each of ``--restore-rounds`` cold: with reverse
  deltas the last (newest) round is key chunks only and round 1 the longest chain (forward
  chains: the other way round); with the daemon's and the CLI's CPU seconds for each (CPU time
  is barely moved by other load on the machine, wall time is) and the 1-minute load average;
* memory: the daemon's peak RssAnon (10 ms sampler).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import limits, profiling, workloads
from benchmarks.chunkd_daemon import CLIENT, DaemonRun, _toml
from benchmarks.memory import read_cpu_ticks
from benchmarks.runner import REPO_ROOT, child_env

MIB = 1 << 20


def _config(daemon: DaemonRun, compression: str, delta: bool) -> None:
    """Set the codec config explicitly (never rely on the embedded defaults, which move)."""
    text = daemon.config.read_text()
    lines = [
        line for line in text.splitlines() if not line.startswith(("compression =", "delta ="))
    ]
    lines += [f"compression = {_toml(compression)}", f"delta = {_toml(delta)}"]
    daemon.config.write_text("\n".join(lines) + "\n")


def _startup_s() -> float:
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "chunkd.cli.main", "--version"],
            capture_output=True,
            cwd=REPO_ROOT,
            env=child_env(),
            check=True,
        )
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def _copy_fsync_mb_s(source: Path, directory: Path) -> float:
    r = limits.copy_fsync(source, directory)
    return float(r["user_space"]["mb_per_s"])  # type: ignore[index]


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _restore(daemon: DaemonRun, round_num: int, out: Path, size: int, startup: float) -> dict:
    os.sync()
    daemon.sampler.mark()  # type: ignore[union-attr]
    ticks, cli_cpu = read_cpu_ticks(daemon.pid), _children_cpu_s()
    t = time.perf_counter()
    proc = daemon.cli("restore", "--client", CLIENT, "--round", str(round_num), "-o", str(out))
    wall = time.perf_counter() - t
    daemon_cpu = (read_cpu_ticks(daemon.pid) - ticks) / os.sysconf("SC_CLK_TCK")
    cli_cpu = _children_cpu_s() - cli_cpu
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    served = [e for e in daemon.events() if e.get("event") == "restore.served"][-1]
    out.unlink()
    return {
        "wall_s": wall,
        "net_s": wall - startup,
        "mb_s": size / 1e6 / (wall - startup),
        "served_ms": served.get("duration_ms"),
        "daemon_cpu_s": daemon_cpu,
        "cli_cpu_s": cli_cpu,
        "peak_rss_mib": daemon.sampler.window_peak_kib / 1024,  # type: ignore[union-attr]
    }


class _Spy:
    """py-spy attached to the daemon for one operation (``None`` dir: does nothing)."""

    def __init__(self, directory: Path | None, pid: int, name: str) -> None:
        self.proc = None
        if directory is None:
            return
        directory.mkdir(parents=True, exist_ok=True)
        self.out = directory / f"{name}.raw"
        argv = [*profiling.pyspy_prefix(self.out)[:-1], "--pid", str(pid)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(2)
            self.proc.wait(timeout=120)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--compression", default="auto")
    p.add_argument("--delta", action="store_true")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument(
        "--restore-rounds",
        default="1,last",
        help="rounds restored cold (comma-separated; 'last' = --rounds): with reverse deltas the"
        " last round is key chunks only, round 1 the longest chain",
    )
    p.add_argument("--skip-warm", action="store_true", help="no warm restore after ingest")
    p.add_argument("--profile", type=Path, default=None, help="py-spy raw files go here")
    p.add_argument("--inputs", type=Path, default=Path("/tmp/perf18-inputs"))
    args = p.parse_args()

    inputs = args.inputs / f"{args.size}"
    files = []
    model = None
    for r in range(1, args.rounds + 1):
        path = inputs / f"model_round_{r}.pth"
        if not path.exists():
            if model is None:
                model = workloads.Model(args.size * MIB, "float32", seed=1)
                for _ in range(1, r):
                    model.step()
            if r > 1:
                model.step()
            model.save(path)
        files.append(path)

    work = Path(tempfile.mkdtemp(prefix="perf18-run-"))
    startup = _startup_s()
    result: dict[str, object] = {"config": vars(args) | {"inputs": str(args.inputs)}}
    result["cli_startup_s"] = startup
    try:
        daemon = DaemonRun(work / "d")
        _config(daemon, args.compression, args.delta)
        daemon.start()
        ingests = []
        for r, staged in enumerate(files, start=1):
            dest = daemon.client_dir / staged.name
            shutil.copyfile(staged, work / "staged.pth")
            os.sync()
            daemon.sampler.mark()  # type: ignore[union-attr]
            spy = _Spy(args.profile if r == 2 else None, daemon.pid, f"ingest_round{r}")
            ticks = read_cpu_ticks(daemon.pid)
            os.rename(work / "staged.pth", dest)
            ev = daemon.wait_ingest(dest, timeout_s=900)
            daemon_cpu = (read_cpu_ticks(daemon.pid) - ticks) / os.sysconf("SC_CLK_TCK")
            spy.stop()
            size = dest.stat().st_size
            chunkd_mb_s = size / 1e6 / (float(ev["duration_ms"]) / 1e3)
            raw = limits.sqlite_insert(work, size, 65536, "TRUNCATE")["mb_per_s"]
            ingests.append(
                {
                    "round": r,
                    "chunkd_mb_s": chunkd_mb_s,
                    "sqlite_mb_s": raw,
                    "ratio": chunkd_mb_s / raw,  # type: ignore[operator]
                    "daemon_cpu_s": daemon_cpu,  # includes the settle delay's idle polling
                    "peak_rss_mib": daemon.sampler.window_peak_kib / 1024,  # type: ignore[union-attr]
                }
            )
        result["ingest"] = ingests
        out = work / "restored.pth"
        if not args.skip_warm:  # the first restore may hit the ingest cache
            size = files[-1].stat().st_size
            rr = _restore(daemon, args.rounds, out, size, startup)
            rr["copy_mb_s"] = _copy_fsync_mb_s(files[-1], work)
            rr["ratio"] = rr["mb_s"] / rr["copy_mb_s"]
            result["restore_warm"] = [rr]
        daemon.stop()
        daemon.log_path.unlink()  # start() waits for a new daemon.ready line
        daemon.start()
        wanted = [
            args.rounds if r.strip() == "last" else int(r) for r in args.restore_rounds.split(",")
        ]
        for round_num in wanted:
            source = files[round_num - 1]
            size = source.stat().st_size
            runs = []
            for i in range(args.reps):
                name = f"restore_round{round_num}"
                spy = _Spy(args.profile if i == 0 else None, daemon.pid, name)
                rr = _restore(daemon, round_num, out, size, startup)
                spy.stop()
                rr["copy_mb_s"] = _copy_fsync_mb_s(source, work)
                rr["ratio"] = rr["mb_s"] / rr["copy_mb_s"]
                rr["loadavg_1m"] = os.getloadavg()[0]
                runs.append(rr)
            result[f"restore_cold_round{round_num}"] = runs
        daemon.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1, default=str))
    summary: dict[str, object] = {
        "ingest_ratio_median": statistics.median(i["ratio"] for i in result["ingest"]),  # type: ignore[union-attr]
        "ingest_peak_rss_mib": max(i["peak_rss_mib"] for i in result["ingest"]),  # type: ignore[union-attr]
    }
    for key, runs in result.items():
        if key.startswith("restore_"):
            summary[key] = {
                stat: round(statistics.median(r[stat] for r in runs), 3)  # type: ignore[union-attr]
                for stat in ("ratio", "daemon_cpu_s", "cli_cpu_s", "peak_rss_mib", "net_s")
            }
    print("SUMMARY", json.dumps(summary))


if __name__ == "__main__":
    main()
