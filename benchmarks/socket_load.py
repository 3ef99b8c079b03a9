"""The socket interface under load: ``python -m benchmarks.socket_load`` (issue 4's figures).

One ``chunkd serve`` with one client and one ~256 MiB float32 round, then:

* restore throughput of the CLI through the socket (fd passing and framed stream) against the
  offline ``--db`` form and against copying the same file + fsync, all measured in this run;
  the CLI's wall time includes its interpreter start-up, the daemon's ``restore.served`` line
  gives the server-side rate;
* the latency of ``status`` requests (one persistent connection) while 20 restores stream to
  ``/dev/null`` at once: p50, p99 and max.

Prints a Markdown table; the inputs live in a temporary directory that is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.runner import REPO_ROOT, child_env
from chunkd.cli.client import DaemonClient


def _cli(*args: str) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "chunkd.cli.main", *args],
        cwd=REPO_ROOT,
        env=child_env(),
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"chunkd {' '.join(args)} failed: {result.stderr.decode()}")
    return time.perf_counter() - started


def _events(log: Path, name: str) -> list[dict[str, object]]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [e for e in map(json.loads, lines) if e.get("event") == name]


def _wait_event(log: Path, name: str, count: int = 1, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while len(_events(log, name)) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {name}")
        time.sleep(0.1)


def _write_checkpoint(path: Path, mib: int) -> None:
    code = (
        "import sys, torch; torch.manual_seed(0); "
        f"torch.save({{f'layer{{i}}.weight': torch.randn(1 << 20) for i in range({mib} // 4)}}, "
        "sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)


def _copy_fsync_s(src: Path, dst: Path) -> float:
    started = time.perf_counter()
    shutil.copyfile(src, dst)
    fd = os.open(dst, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    return time.perf_counter() - started


def run(mib: int, restores: int, repeats: int) -> str:
    with tempfile.TemporaryDirectory(prefix="chunkd-socket-") as tmp:
        root = Path(tmp)
        client_dir = root / "fl" / "client_1"
        client_dir.mkdir(parents=True)
        sock, log = root / "chunkd.sock", root / "daemon.log"
        config = root / "chunkd.toml"
        config.write_text(
            f'watch_root = "{root / "fl"}"\nsocket = "{sock}"\n'
            'settle_delay = "0.2s"\nlog_format = "json"\n'
        )
        _write_checkpoint(root / "staging.pth", mib)
        with open(log, "wb") as log_file:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "chunkd.cli.main", "serve", "--config", str(config)],
                cwd=REPO_ROOT,
                env=child_env(),
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait_event(log, "daemon.ready")
            original = client_dir / "model_round_1.pth"
            os.replace(root / "staging.pth", original)
            _wait_event(log, "checkpoint.ingested")
            size_mb = original.stat().st_size / 1e6
            db = client_dir / "client_1_chunks.db"
            common = ["restore", "--client", "1", "--round", "1", "--socket", str(sock)]
            rows = []
            for label, args in (
                ("CLI through the socket, fd passing", [*common, "--transfer", "fd"]),
                ("CLI through the socket, framed stream", [*common, "--transfer", "frames"]),
                (
                    "CLI offline, `--db`",
                    ["restore", "--client", "1", "--round", "1", "--db", str(db)],
                ),
            ):
                times = sorted(_cli(*args, "-o", str(root / "out.pth")) for _ in range(repeats))
                rows.append((label, size_mb / times[len(times) // 2]))
            served = [float(e["mb_per_s"]) for e in _events(log, "restore.served")]
            copies = sorted(_copy_fsync_s(original, root / "copy.pth") for _ in range(repeats))
            served_median = sorted(served)[len(served) // 2]
            rows.append(("daemon side (`restore.served`), median", served_median))
            rows.append(("copy the file + fsync (baseline)", size_mb / copies[len(copies) // 2]))
            latencies = _status_latency(sock, restores)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=60)
    p = lambda q: latencies[min(len(latencies) - 1, int(len(latencies) * q))] * 1e3  # noqa: E731
    lines = [
        f"Restore of a {size_mb:.0f} MB float32 round (median of {repeats}):",
        "",
        "| path | MB/s |",
        "|---|---|",
    ]
    lines += [f"| {label} | {rate:.0f} |" for label, rate in rows]
    lines += [
        "",
        f"`status` while {restores} restores stream to /dev/null: "
        f"{len(latencies)} requests, p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms, "
        f"max {latencies[-1] * 1e3:.1f} ms",
    ]
    return "\n".join(lines)


def _status_latency(sock: Path, restores: int) -> list[float]:
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "chunkd.cli.main",
                "restore",
                "--client",
                "1",
                "-o",
                "-",
                "--socket",
                str(sock),
            ],
            cwd=REPO_ROOT,
            env=child_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(restores)
    ]
    latencies = []
    with DaemonClient.connect(sock) as client:
        while any(p.poll() is None for p in procs):
            started = time.perf_counter()
            client.call("status")
            latencies.append(time.perf_counter() - started)
            time.sleep(0.01)
    if any(p.returncode != 0 for p in procs):
        raise SystemExit("a concurrent restore failed")
    return sorted(latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--restores", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(run(args.mib, args.restores, args.repeats))


if __name__ == "__main__":
    main()
