"""chunkd through its library API (``ingest_file``, ``restore_round``), one operation per process.

The parent (:func:`measure_ingest`, :func:`measure_restore`, :func:`run_series`) starts
``python -m benchmarks.chunkd_lib <op> ...`` and reads one JSON line back. The child imports
chunkd only, never torch (it checks, and says so in its result), samples its own ``RssAnon``
every 10 ms (:class:`benchmarks.memory.PeakSampler`) and also reports ``ru_maxrss`` (peak
*resident* memory, which includes SQLite's file pages and the shared libraries: an upper bound).

Restores are written to a file and ``fsync``-ed before the clock stops, like the copy baseline in
:mod:`benchmarks.limits` they are compared with; ingests end with SQLite's own ``synchronous=FULL``
commit, like the raw-SQLite baseline.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import os
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks import configs
from benchmarks.configs import DEFAULT, NAMES
from benchmarks.memory import PeakSampler
from benchmarks.runner import emit, module_argv, run_json

MODULE = "benchmarks.chunkd_lib"


# -- parent side ---------------------------------------------------------------------------------
def measure_ingest(
    db: Path,
    file: Path,
    config: str = DEFAULT,
    *,
    prefix: list[str] | None = None,
    cprofile_out: Path | None = None,
) -> dict[str, object]:
    args = ["ingest", "--db", str(db), "--file", str(file), "--config", config]
    if cprofile_out is not None:
        args += ["--cprofile", str(cprofile_out)]
    return run_json(module_argv(MODULE, *args), prefix=prefix)


def measure_restore(
    db: Path,
    round_num: int,
    out: Path,
    expect_sha256: str,
    *,
    prefix: list[str] | None = None,
    cprofile_out: Path | None = None,
) -> dict[str, object]:
    args = [
        "restore",
        "--db",
        str(db),
        "--round",
        str(round_num),
        "--out",
        str(out),
        "--expect-sha256",
        expect_sha256,
    ]
    if cprofile_out is not None:
        args += ["--cprofile", str(cprofile_out)]
    return run_json(module_argv(MODULE, *args), prefix=prefix)


def run_series(
    db: Path, files: Sequence[Path], config: str, verify_rounds: Sequence[int]
) -> dict[str, object]:
    """Ingest a whole series in one child (per-round figures; memory is not the point here)."""
    args = [
        "series",
        "--db",
        str(db),
        "--config",
        config,
        "--verify-rounds",
        ",".join(str(r) for r in verify_rounds),
        *map(str, files),
    ]
    return run_json(module_argv(MODULE, *args))


def create_db(db: Path) -> None:
    """An empty client database, as the daemon creates when it adds a client."""
    from chunkd.store import ChunkStore

    ChunkStore.open_writer(db).close()


# -- child side ----------------------------------------------------------------------------------
def _cpu_s() -> float:
    """CPU time of this process, all threads: unlike wall time, barely moved by other load."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _memory_fields(sampler: PeakSampler) -> dict[str, object]:
    return {
        "rss_anon_peak_kib": sampler.peak_kib,
        "rss_anon_baseline_kib": sampler.baseline_kib,
        "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "rss_samples": sampler.samples,
        "torch_imported": "torch" in sys.modules,
    }


def _profiled(out: str | None):
    if out is None:
        return _NoProfile()
    return _Profile(out)


class _NoProfile:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


class _Profile:
    """cProfile of the calling (main) thread only; the worker threads need py-spy."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.prof = cProfile.Profile()

    def __enter__(self) -> None:
        self.prof.enable()

    def __exit__(self, *exc: object) -> None:
        self.prof.disable()
        self.prof.dump_stats(self.out)


def _ingest(args: argparse.Namespace) -> dict[str, object]:
    # Imported after the sampler's baseline would be cleaner, but the baseline is read when
    # the sampler starts, so importing here keeps chunkd's modules out of the parent too.
    from chunkd.ingest import ingest_file
    from chunkd.store import ChunkStore

    options = configs.options(args.config)
    configs.prepare_cache(options)
    with PeakSampler() as sampler:
        store = ChunkStore.open_writer(args.db)
        try:
            started, cpu0 = time.perf_counter(), _cpu_s()
            with _profiled(args.cprofile):
                result = ingest_file(Path(args.file), store, options)
            seconds, cpu_s = time.perf_counter() - started, _cpu_s() - cpu0
            stats = store.stats()
        finally:
            store.close()
    return {
        "op": "ingest",
        "config": args.config,
        "compression": options.compression,
        "delta": options.delta,
        "outcome": result.outcome,
        "round": result.round_num,
        "bytes_in": result.bytes_in,
        "seconds": seconds,
        "mb_per_s": result.bytes_in / 1e6 / seconds,
        "file_sha256": result.file_sha256,
        "cpu_s": cpu_s,
        "chunks": result.chunks,
        "chunks_new": result.chunks_new,
        "bytes_new": result.bytes_new,
        "stored_bytes": stats.stored_bytes,
        "raw_bytes": stats.raw_bytes,
        "db_file_bytes": stats.db_file_bytes,
        "compression_ratio": stats.compression_ratio,
        **_memory_fields(sampler),
    }


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _restore(args: argparse.Namespace) -> dict[str, object]:
    from chunkd.restore import restore_round
    from chunkd.store import ChunkStore

    with PeakSampler() as sampler:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            started, cpu0 = time.perf_counter(), _cpu_s()
            with _profiled(args.cprofile), ChunkStore.open_reader(args.db) as store:
                result = restore_round(store, args.round, lambda b: _write_all(fd, b))
            os.fsync(fd)
            seconds, cpu_s = time.perf_counter() - started, _cpu_s() - cpu0
        finally:
            os.close(fd)
    ok = args.expect_sha256 in ("", result.file_sha256)
    return {
        "op": "restore",
        "round": args.round,
        "bytes_out": result.bytes_written,
        "seconds": seconds,
        "mb_per_s": result.bytes_written / 1e6 / seconds,
        "cpu_s": cpu_s,
        "file_sha256": result.file_sha256,
        "byte_identical": ok,
        **_memory_fields(sampler),
    }


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def _series(args: argparse.Namespace) -> dict[str, object]:
    from chunkd.ingest import ingest_file
    from chunkd.restore import restore_round
    from chunkd.store import ChunkStore

    options = configs.options(args.config)
    configs.prepare_cache(options)
    rounds: list[dict[str, object]] = []
    with ChunkStore.open_writer(args.db) as store:
        for file in args.files:
            before = Path(args.db).stat().st_size
            started = time.perf_counter()
            result = ingest_file(Path(file), store, options)
            seconds = time.perf_counter() - started
            rounds.append(
                {
                    "round": result.round_num,
                    "outcome": result.outcome,
                    "seconds": seconds,
                    "bytes_in": result.bytes_in,
                    "bytes_new": result.bytes_new,
                    "chunks": result.chunks,
                    "chunks_new": result.chunks_new,
                    "db_growth_bytes": Path(args.db).stat().st_size - before,
                    "db_file_bytes": Path(args.db).stat().st_size,
                    "file_sha256": result.file_sha256,
                }
            )
        stats = store.stats()
    verified: dict[str, bool] = {}
    wanted = [int(r) for r in args.verify_rounds.split(",") if r]
    with ChunkStore.open_reader(args.db) as reader:
        for r in wanted:
            sha = hashlib.sha256()
            res = restore_round(reader, r, sha.update)
            original = next(x for x in rounds if x["round"] == r)
            verified[str(r)] = res.file_sha256 == original["file_sha256"] == sha.hexdigest()
    return {
        "op": "series",
        "config": args.config,
        "rounds": rounds,
        "stored_bytes": stats.stored_bytes,
        "raw_bytes": stats.raw_bytes,
        "referenced_raw_bytes": stats.referenced_raw_bytes,
        "db_file_bytes": stats.db_file_bytes,
        "dedup_ratio": stats.dedup_ratio,
        "compression_ratio": stats.compression_ratio,
        "verified": verified,
        "torch_imported": "torch" in sys.modules,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}")
    sub = parser.add_subparsers(dest="op", required=True)
    ing = sub.add_parser("ingest")
    ing.add_argument("--db", required=True)
    ing.add_argument("--file", required=True)
    ing.add_argument("--config", default=DEFAULT, choices=NAMES)
    ing.add_argument("--cprofile")
    res = sub.add_parser("restore")
    res.add_argument("--db", required=True)
    res.add_argument("--round", type=int, required=True)
    res.add_argument("--out", required=True)
    res.add_argument("--expect-sha256", default="")
    res.add_argument("--cprofile")
    ser = sub.add_parser("series")
    ser.add_argument("--db", required=True)
    ser.add_argument("--config", default=DEFAULT, choices=NAMES)
    ser.add_argument("--verify-rounds", default="")
    ser.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    handler = {"ingest": _ingest, "restore": _restore, "series": _series}[args.op]
    emit(handler(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
