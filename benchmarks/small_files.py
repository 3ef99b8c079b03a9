"""``python -m benchmarks.small_files`` (issue 20): the per-file fixed cost of ingest, in files/s.

For 2 KB, 100 KB and 10 MB real ``torch.save`` checkpoints (rounds 1..N of one client):

* ``library``: :func:`chunkd.ingest.ingest_file` into one real store opened once (a fresh process,
  the shipped defaults), as the daemon's writer calls it;
* ``daemon``: the same files written in a burst into one client directory of a real daemon,
  N / (last ``checkpoint.ingested`` - first write): the settle delay (1 s) is inside this figure;
* ``sqlite``: the baseline, measured in the same run: a raw SQLite insert of the same bytes
  with one fsync'd commit per file, under the store's own journal pragmas (``TRUNCATE``,
  ``synchronous=FULL``), so the ratio is chunkd's cost over the least a durable commit costs.

``--profile`` adds a cProfile of the library loop for the smallest size (the top functions by
own time), which is where the fixed cost shows.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import configs
from benchmarks.configs import DEFAULT
from benchmarks.runner import emit, module_argv, run_json

Result = dict[str, object]

#: (label, approximate file bytes, files per run)
SIZES = (("2 KB", 2_000, 300), ("100 KB", 100_000, 200), ("10 MB", 10_000_000, 20))
QUICK_SIZES = (("2 KB", 2_000, 20), ("100 KB", 100_000, 10))


def write_files(directory: Path, approx_bytes: int, count: int) -> list[Path]:
    """``model_round_1.pth`` .. ``model_round_N.pth``: a float32 tensor that moves every round
    (FedAvg-like: every weight changes), sized so the file is about ``approx_bytes``."""
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    numel = max(16, (approx_bytes - 1_300) // 4)
    gen = torch.Generator().manual_seed(20)
    weights = torch.randn(numel, generator=gen)
    paths = []
    for r in range(1, count + 1):
        weights = weights + 0.01 * torch.randn(numel, generator=gen)
        path = directory / f"model_round_{r}.pth"
        torch.save({"w": weights, "round": r}, path)
        paths.append(path)
    return paths


# -- children (a fresh process each: nothing left over from generating the inputs) --------------
def child_library(db: Path, directory: Path, profile: Path | None) -> Result:
    from chunkd.ingest import ingest_file
    from chunkd.store import ChunkStore

    files = sorted(directory.glob("*.pth"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    opts = configs.options(DEFAULT)
    configs.prepare_cache(opts)
    profiler = cProfile.Profile() if profile else None
    with ChunkStore.open_writer(db) as store:
        started = time.perf_counter()
        if profiler:
            profiler.enable()
        for path in files:
            ingest_file(path, store, opts)
        if profiler:
            profiler.disable()
        seconds = time.perf_counter() - started
    out: Result = {"files": len(files), "seconds": seconds, "files_per_s": len(files) / seconds}
    if profiler and profile:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(20)
        profile.write_text(text.getvalue())
        out["profile"] = str(profile)
    return out


def child_sqlite(db: Path, directory: Path) -> Result:
    files = sorted(directory.glob("*.pth"))
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=TRUNCATE")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE f (name TEXT PRIMARY KEY, data BLOB)")
    started = time.perf_counter()
    for path in files:
        data = path.read_bytes()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO f VALUES (?, ?)", (path.name, data))
        conn.execute("COMMIT")
    seconds = time.perf_counter() - started
    conn.close()
    return {"files": len(files), "seconds": seconds, "files_per_s": len(files) / seconds}


# -- the daemon ---------------------------------------------------------------------------------
def daemon_burst(root: Path, files: list[Path], timeout_s: float = 600) -> Result:
    from benchmarks.chunkd_daemon import _parse_ts
    from benchmarks.many_clients import TailedDaemon

    daemon = TailedDaemon(root)
    client = daemon.watch_root / "client_small"
    client.mkdir(parents=True)
    daemon.start()
    try:
        payloads = [(client / f.name, f.read_bytes()) for f in files]
        written_at = time.time()
        for dest, data in payloads:
            with open(dest, "wb") as f:
                f.write(data)
        got = daemon.wait_ingested([d for d, _ in payloads], time.monotonic() + timeout_s)
        events = [daemon.ingested[str(d)][0] for d, _ in payloads if str(d) in daemon.ingested]
    finally:
        daemon.stop()
    last = max(_parse_ts(e["timestamp"]) for e in events) if events else written_at
    durations = sorted(float(e["duration_ms"]) for e in events)  # type: ignore[arg-type]
    return {
        "files": len(files),
        "ingested": got,
        "failures": len(daemon.failures),
        "seconds": last - written_at,
        "files_per_s": got / max(1e-6, last - written_at),
        "median_duration_ms": durations[len(durations) // 2] if durations else None,
    }


def run(work: Path, quick: bool = False, daemon: bool = True) -> Result:
    rows = []
    for label, approx, count in QUICK_SIZES if quick else SIZES:
        directory = work / "small_files" / label.replace(" ", "")
        files = write_files(directory / "in", approx, count)
        row: Result = {"label": label, "file_bytes": files[0].stat().st_size, "files": count}
        for what in ("library", "sqlite"):
            db = directory / f"{what}.db"
            extra = ["--profile", str(directory / "profile.txt")] if what == "library" else []
            row[what] = run_json(
                module_argv(
                    "benchmarks.small_files", "child", what, str(db), str(directory / "in"), *extra
                )
            )
            if what == "library" and (directory / "profile.txt").exists():
                row["profile_top"] = _profile_top((directory / "profile.txt").read_text())
        if daemon:
            row["daemon"] = daemon_burst(directory / "daemon", files)
        rows.append(row)
        shutil.rmtree(directory, ignore_errors=True)
    return {"rows": rows}


def _profile_top(text: str, n: int = 8) -> list[str]:
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith("ncalls")), None)
    if start is None:
        return []
    return [line.strip() for line in lines[start + 1 : start + 1 + n] if line.strip()]


def render(result: object) -> str:
    if not isinstance(result, dict) or "rows" not in result:
        err = result.get("error") if isinstance(result, dict) else None
        return f"\n## Small checkpoints: files/s (issue 20)\n\nNot measured: {err}\n"
    out = [
        "",
        "## Small checkpoints: files/s (issue 20; `python -m benchmarks.small_files`)",
        "",
        "Rounds 1..N of one client, real `torch.save` files, shipped defaults. Library: "
        "`ingest_file` into one store opened once (fresh process). Daemon: the files written "
        "in a burst into one client directory, first write -> last `checkpoint.ingested` "
        "(includes the 1 s settle delay). Baseline: raw SQLite insert of the same bytes, one "
        "fsync'd commit per file (`journal_mode=TRUNCATE`, `synchronous=FULL`), same run.",
        "",
        "| file | files | library files/s | daemon files/s (median ingest ms) "
        "| SQLite baseline files/s | library / baseline |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lib = row["library"]["files_per_s"]
        base = row["sqlite"]["files_per_s"]
        d = row.get("daemon")
        daemon = (
            f"{d['files_per_s']:.0f} ({d['median_duration_ms']:.1f})"
            if isinstance(d, dict) and d.get("median_duration_ms") is not None
            else "-"
        )
        out.append(
            f"| {row['label']} ({row['file_bytes']:,} B) | {row['files']} | {lib:.0f} | "
            f"{daemon} | {base:.0f} | {lib / base:.2f} |"
        )
    return "\n".join([*out, ""])


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["child"]:
        what, db, directory = args[1], Path(args[2]), Path(args[3])
        profile = Path(args[5]) if args[4:5] == ["--profile"] else None
        emit(
            child_library(db, directory, profile)
            if what == "library"
            else child_sqlite(db, directory)
        )
        return 0
    p = argparse.ArgumentParser(prog="python -m benchmarks.small_files")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-daemon", action="store_true")
    p.add_argument("--work", type=Path, default=None)
    ns = p.parse_args(args)
    work = Path(tempfile.mkdtemp(prefix="chunkd-small-", dir=ns.work or "/tmp"))
    try:
        result = run(work, ns.quick, not ns.no_daemon)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(render(result))
    for row in result["rows"]:  # type: ignore[union-attr]
        print(f"-- {row['label']} library profile (top by own time):")
        print("\n".join(row.get("profile_top", [])))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
