"""``python -m benchmarks`` (``make bench``): every system on the same inputs, in one run.

Phases, each recorded in ``<out>/results.json`` and rendered into ``RESULTS.md`` + a PNG chart:

1. inputs: one checkpoint per size x dtype (:mod:`benchmarks.workloads`), kept under ``--work``
   (``/tmp`` by default: gigabytes that must never land in the repository);
2. the machine's limits (:mod:`benchmarks.limits`), measured now, not quoted;
3. per checkpoint: chunkd's library path (a fresh process per operation), the daemon, the
   seed-style baseline, restic, and (float32) a raw SQLite insert and a file copy of the same
   size run right after them, the baselines issue 18's ratios are paired with;
4. per series (10 rounds of ``fedavg``, ``frozen``, ``nonpart``): stored bytes round by round;
   retention in the daemon over the ``fedavg`` series (a backlog, then prune after each round);
5. the daemon's idle CPU and close -> ingested latency; 6. a py-spy profile of the largest
   float32 ingest and restore; 7. the store's concurrency, overhead and replica figures;
8. issue 20's scale: files/s of 2 KB, 100 KB and 10 MB checkpoints (:mod:`benchmarks.small_files`),
   ``--many-clients`` directories on one daemon (:mod:`benchmarks.many_clients`, bounded by
   ``--many-clients-timeout``), Flower's simulation engine beside it (:mod:`benchmarks.flower_sim`);
9. real FedAvg trajectories (a CNN and a FederatedScope-style MLP) through the engine.

chunkd is measured with its shipped defaults (:mod:`benchmarks.configs`: ``default`` is
``chunkd.config.load_settings(None)``) unless a figure names another config, such as ``none``.

A missed target never fails the run (a benchmark reports); a crash in a phase is recorded and
makes the exit status 1 after the report is written, so the CI smoke run notices rot.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import (
    chunkd_daemon,
    chunkd_lib,
    configs,
    contention,
    db_overhead,
    flower_sim,
    limits,
    many_clients,
    many_clients_report,
    profiling,
    replica_bench,
    restic_bench,
    seed_baseline,
    small_files,
)
from benchmarks.configs import DEFAULT
from benchmarks.runner import REPO_ROOT

MIB = 1 << 20
Result = dict[str, object]


@dataclass
class Plan:
    """What to run; ``--quick`` shrinks every dimension so the smoke run takes seconds."""

    sizes_mib: list[int]
    dtypes: list[str]
    series_mib: float
    series_dtypes: list[str]
    repeats: int
    limit_bytes: int
    idle_s: float
    latency_files: int
    seed_dtypes: list[str]
    seed_series: bool
    precreated: bool
    series_kinds: tuple[str, ...]
    profile: bool
    daemon: bool
    restic: bool
    replica: bool = True
    skipped: list[str] = field(default_factory=list)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny inputs, no profile: a seconds-long smoke run for CI",
    )
    p.add_argument("--sizes", default="64,256,1024", help="checkpoint sizes in MiB")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument(
        "--series-size", type=float, default=256.0, help="MiB per round of the 10-round series"
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed repeats of chunkd's library ingest/restore (median reported)",
    )
    p.add_argument(
        "--out", type=Path, default=Path("benchmarks/out"), help="raw results, logs and profiles"
    )
    p.add_argument(
        "--results",
        type=Path,
        default=None,
        help="the Markdown report (default: benchmarks/RESULTS.md; "
        "<out>/RESULTS.md with --quick, so a smoke run never overwrites it)",
    )
    p.add_argument(
        "--chart", type=Path, default=None, help="the PNG (default: results.png beside the report)"
    )
    p.add_argument(
        "--work",
        type=Path,
        default=None,
        help="scratch directory for inputs and databases (default: a new one in /tmp)",
    )
    p.add_argument("--no-daemon", action="store_true", help="skip the `chunkd serve` measurements")
    p.add_argument("--no-restic", action="store_true", help="skip restic")
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    p.add_argument(
        "--no-trajectory", action="store_true", help="skip the real FedAvg trajectory series"
    )
    p.add_argument(
        "--trajectory-only",
        action="store_true",
        help="run only the FedAvg trajectory phases and splice their section into the report",
    )
    p.add_argument(
        "--codecs-full",
        action="store_true",
        help="every codec candidate and delta transform (minutes), not the short list",
    )
    p.add_argument(
        "--many-clients",
        type=int,
        default=10_000,
        help="client directories of the issue-20 scale run (0: skip it)",
    )
    p.add_argument(
        "--many-clients-timeout",
        type=float,
        default=1500.0,
        help="seconds the scale run may take; a stuck daemon yields partial figures",
    )
    p.add_argument(
        "--flower-clients",
        type=int,
        default=1000,
        help="clients of Flower's simulation engine beside the daemon (0: skip; needs "
        "flwr[simulation] in $CHUNKD_FLWR_PYTHON or this interpreter)",
    )
    p.add_argument(
        "--render-only",
        action="store_true",
        help="re-render the report and chart from <out>/results.json; measure nothing",
    )
    return p.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    dtypes = [d for d in args.dtypes.split(",") if d]
    if args.quick:
        # Seconds, not minutes, on a loaded CI machine: one float32 checkpoint (the bf16 codec
        # paths run in the trajectory phase), no seed-style baseline (each of its processes
        # imports torch, seconds apiece), no S3 server.
        return Plan(
            sizes_mib=[2],
            dtypes=dtypes[:1],
            series_mib=1,
            series_dtypes=dtypes[:1],
            repeats=1,
            limit_bytes=8 * MIB,
            idle_s=1.0,
            latency_files=1,
            seed_dtypes=[],
            seed_series=False,
            precreated=False,
            series_kinds=("nonpart",),  # rounds that move and rounds that repeat
            profile=False,
            daemon=not args.no_daemon,
            restic=not args.no_restic,
            replica=False,
            skipped=[
                "seed-style baseline (--quick: its processes import torch)",
                "ingest into a pre-created database (--quick)",
                "fedavg and frozen series (--quick)",
                "profile (--quick)",
                "replica upload (--quick; tests/replica runs a real S3 server)",
            ],
        )
    sizes = [int(s) for s in args.sizes.split(",") if s]
    return Plan(
        sizes_mib=sizes,
        dtypes=dtypes,
        series_mib=args.series_size,
        series_dtypes=dtypes,
        repeats=max(1, args.repeats),
        limit_bytes=min(max(sizes), 1024) * MIB,
        idle_s=15.0,
        latency_files=3,
        seed_dtypes=dtypes,
        seed_series=True,
        precreated=True,
        series_kinds=("fedavg", "frozen", "nonpart"),
        profile=not args.no_profile,
        daemon=not args.no_daemon,
        restic=not args.no_restic,
    )


class Bench:
    """Runs the phases; every phase failure is kept, not raised."""

    def __init__(self, plan: Plan, work: Path, out: Path) -> None:
        self.plan = plan
        self.work = work
        self.out = out
        self.results: Result = {
            "checkpoints": [],
            "series": [],
            "skipped": list(plan.skipped),
            "errors": [],
        }
        self.daemon_reason = None if plan.daemon else "--no-daemon"
        if self.daemon_reason is None:
            self.daemon_reason = chunkd_daemon.unavailable_reason()
        self.restic_reason = None if plan.restic else "--no-restic"
        if self.restic_reason is None:
            self.restic_reason = restic_bench.unavailable_reason()
        for what, reason in (("chunkd daemon", self.daemon_reason), ("restic", self.restic_reason)):
            if reason:
                self.results["skipped"].append(f"{what}: {reason}")  # type: ignore[union-attr]

    def attempt(self, what: str, fn: Callable[[], Result]) -> Result:
        started = time.perf_counter()
        print(f"[bench] {what} ...", file=sys.stderr, flush=True)
        try:
            result = fn()
        except Exception as e:  # a benchmark reports; one broken system must not hide the rest
            message = f"{what}: {type(e).__name__}: {e}"
            self.results["errors"].append(message)  # type: ignore[union-attr]
            (self.out / "errors.log").open("a").write(traceback.format_exc() + "\n")
            print(f"[bench] FAILED {message}", file=sys.stderr, flush=True)
            return {"error": str(e)}
        print(
            f"[bench] {what} done in {time.perf_counter() - started:.1f}s",
            file=sys.stderr,
            flush=True,
        )
        return result

    # -- checkpoints -----------------------------------------------------------------------------
    def run_checkpoints(self) -> None:
        from benchmarks import workloads  # torch: this (parent) process only

        files: list[tuple[int, str, Path]] = []
        for size in self.plan.sizes_mib:
            for dtype in self.plan.dtypes:
                path = self.work / "ckpt" / f"{size}MiB_{dtype}" / "model_round_1.pth"
                self.attempt(
                    f"generate {size} MiB {dtype}",
                    lambda p=path, s=size, d=dtype: {
                        "path": str(workloads.write_checkpoint(p, s * MIB, d))
                    },
                )
                if path.exists():
                    files.append((size, dtype, path))
        if not files:
            return
        biggest = max(
            (f for f in files if f[1] == "float32"), default=files[-1], key=lambda f: f[0]
        )
        self.results["limits"] = self.attempt(
            "machine limits",
            lambda: limits.measure_limits(self.work / "limits", self.plan.limit_bytes, biggest[2]),
        )
        for size, dtype, path in files:
            self.results["checkpoints"].append(  # type: ignore[union-attr]
                self.measure_checkpoint(size, dtype, path)
            )
        if self.plan.profile:
            self.results["profile"] = self.attempt(
                f"py-spy profile of {biggest[0]} MiB float32",
                lambda: self.profile(biggest[2], biggest[0]),
            )
        if self.daemon_reason is None:
            small = [
                workloads.write_checkpoint(
                    self.work / "small" / f"s{i}.pth", 10 * MIB, "float32", seed=100 + i
                )
                for i in range(self.plan.latency_files)
            ]
            self.results["daemon_idle_latency"] = self.attempt(
                "daemon idle CPU and latency",
                lambda: chunkd_daemon.measure_idle_and_latency(
                    self.work / "daemon_idle", small, self.plan.idle_s
                ),
            )
        shutil.rmtree(self.work / "ckpt", ignore_errors=True)

    def measure_checkpoint(self, size: int, dtype: str, path: Path) -> Result:
        label = f"{size} MiB {dtype}"
        dbs = self.work / "db"
        restored = self.work / "restored.pth"
        entry: Result = {
            "size_mib": size,
            "dtype": dtype,
            "bytes": path.stat().st_size,
            "disk_bytes": path.stat().st_blocks * 512,
        }

        def lib() -> Result:
            # "ingest"/"restore": the shipped defaults; "*_none": compression and delta off.
            runs: Result = {"ingest": [], "restore": [], "ingest_none": [], "restore_none": []}
            for config, suffix in ((DEFAULT, ""), ("none", "_none")):
                repeats = self.plan.repeats if config == DEFAULT or dtype == "float32" else 1
                for i in range(repeats):
                    db = dbs / f"lib_{config}_{i}.db"
                    _fresh(db)
                    ing = chunkd_lib.measure_ingest(db, path, config)
                    runs[f"ingest{suffix}"].append(ing)  # type: ignore[union-attr]
                    runs[f"restore{suffix}"].append(  # type: ignore[union-attr]
                        chunkd_lib.measure_restore(db, 1, restored, str(ing["file_sha256"]))
                    )
                    _fresh(db)
            if self.plan.precreated:
                # The same ingest into a database created beforehand (a client's later rounds).
                pre = dbs / "lib_pre.db"
                _fresh(pre)
                chunkd_lib.create_db(pre)
                runs["ingest_precreated"] = chunkd_lib.measure_ingest(pre, path, DEFAULT)
                _fresh(pre)
            restored.unlink(missing_ok=True)
            return runs

        entry["chunkd_lib"] = self.attempt(f"chunkd library, {label}", lib)
        best = _get_best_sqlite(self.results)
        if dtype == "float32" and best is not None:
            # Paired with the figures above: the same size, moments later, same load.
            entry["baseline"] = self.attempt(
                f"raw SQLite insert and copy + fsync, {label}",
                lambda: {
                    "sqlite": limits.sqlite_insert(
                        self.work / "limits", path.stat().st_size, *best
                    ),
                    "copy_fsync": limits.copy_fsync(path, self.work / "limits"),
                },
            )
        if dtype in self.plan.seed_dtypes:

            def seed() -> Result:
                db = dbs / "seed.db"
                _fresh(db)
                ing = seed_baseline.measure_ingest(db, path, 1)
                res = seed_baseline.measure_restore(db, 1, restored)
                _fresh(db)
                restored.unlink(missing_ok=True)
                return {"ingest": ing, "restore": res}

            entry["seed"] = self.attempt(f"seed-style baseline, {label}", seed)
        for config, key in ((DEFAULT, "daemon"), ("none", "daemon_none")):
            if self.daemon_reason is not None or (key == "daemon_none" and dtype != "float32"):
                continue
            root = self.work / f"daemon_{size}_{dtype}_{config}"
            entry[key] = self.attempt(
                f"chunkd daemon ({config}), {label}",
                lambda r=root, c=config: chunkd_daemon.measure_checkpoint(r, path, restored, c),
            )
            shutil.rmtree(root, ignore_errors=True)
        if self.restic_reason is None:
            entry["restic"] = self.attempt(
                f"restic, {label}", lambda: restic_bench.measure_checkpoint(self.work, path)
            )
        return entry

    def profile(self, path: Path, size: int) -> Result:
        db = self.work / "db" / "profile.db"
        _fresh(db)
        ing_raw = self.out / f"profile_ingest_{size}MiB.txt"
        res_raw = self.out / f"profile_restore_{size}MiB.txt"
        ing = chunkd_lib.measure_ingest(db, path, DEFAULT, prefix=profiling.pyspy_prefix(ing_raw))
        res = chunkd_lib.measure_restore(
            db,
            1,
            self.work / "restored.pth",
            str(ing["file_sha256"]),
            prefix=profiling.pyspy_prefix(res_raw),
        )
        _fresh(db)
        (self.work / "restored.pth").unlink(missing_ok=True)
        return {
            "rate_hz": profiling.RATE_HZ,
            "size_mib": size,
            "ingest": {
                "seconds_profiled": ing["seconds"],
                "raw": str(ing_raw),
                "by_thread": profiling.summarize(ing_raw),
                "top_main": profiling.top_leaf_functions(ing_raw, "main thread"),
            },
            "restore": {
                "seconds_profiled": res["seconds"],
                "raw": str(res_raw),
                "by_thread": profiling.summarize(res_raw),
                "top_main": profiling.top_leaf_functions(res_raw, "main thread"),
            },
        }

    # -- series ----------------------------------------------------------------------------------
    def run_series(self) -> None:
        from benchmarks import workloads  # torch: this (parent) process only

        size_bytes = int(self.plan.series_mib * MIB)
        for dtype in self.plan.series_dtypes:
            for kind in self.plan.series_kinds:
                directory = self.work / "series" / f"{kind}_{dtype}"
                shutil.rmtree(directory, ignore_errors=True)
                label = f"series {kind} {dtype}"
                files = self.attempt(
                    f"generate {label}",
                    lambda k=kind, d=dtype, dd=directory: {
                        "files": [
                            {
                                "round": f.round_num,
                                "path": str(f.path),
                                "repeated": f.repeated,
                                "bytes": f.path.stat().st_size,
                                "disk_bytes": f.path.stat().st_blocks * 512,
                            }
                            for f in workloads.write_series(k, dd, size_bytes, d)
                        ]
                    },
                )
                if "files" not in files:
                    continue
                entry = self.measure_series(kind, dtype, files["files"])  # type: ignore[arg-type]
                entry["head_share"] = workloads.head_share(size_bytes, dtype)
                self.results["series"].append(entry)  # type: ignore[union-attr]
                shutil.rmtree(directory, ignore_errors=True)

    def measure_series(self, kind: str, dtype: str, files: list[dict[str, object]]) -> Result:
        label = f"series {kind} {dtype}"
        paths = [Path(str(f["path"])) for f in files]
        repeated = [int(f["round"]) for f in files if f["repeated"]]  # type: ignore[call-overload]
        verify = sorted({int(files[-1]["round"]), *repeated[:1]})  # type: ignore[call-overload]
        entry: Result = {
            "kind": kind,
            "dtype": dtype,
            "size_mib": self.plan.series_mib,
            "files": files,
        }
        for config in ("none", DEFAULT):
            db = self.work / "db" / f"series_{config}.db"
            _fresh(db)
            entry[f"chunkd_{config}"] = self.attempt(
                f"chunkd {config}, {label}",
                lambda db=db, c=config: chunkd_lib.run_series(db, paths, c, verify),
            )
            _fresh(db)
        first = (self.plan.series_kinds[0], self.plan.series_dtypes[0])
        if (kind, dtype) == first and not self.daemon_reason:  # fedavg: every weight moves
            keep = int(configs.defaults().chunk_keep_rounds)
            retention = self.attempt(
                f"daemon retention (keep {keep}), {label}",
                lambda: chunkd_daemon.measure_retention(
                    self.work / "daemon_retention", paths, keep, backlog=min(len(paths), keep + 2)
                ),
            )
            self.results["retention"] = {**retention, "series": f"{kind} {dtype}"}
            shutil.rmtree(self.work / "daemon_retention", ignore_errors=True)
        if self.plan.seed_series:
            db = self.work / "db" / "series_seed.db"
            _fresh(db)
            entry["seed"] = self.attempt(
                f"seed-style, {label}",
                lambda: seed_baseline.run_series(
                    db, [(int(f["round"]), Path(str(f["path"]))) for f in files]
                ),
            )  # type: ignore[call-overload]
            _fresh(db)
        if self.restic_reason is None:
            entry["restic"] = self.attempt(
                f"restic, {label}", lambda: restic_bench.run_series(self.work, paths)
            )
        return entry


def run_scale(bench: Bench, args: argparse.Namespace, work: Path) -> None:
    """Issue 20: files/s of small checkpoints, N clients on one daemon, a framework at scale.
    ``--quick``: small files without the 10 MB size, 20 clients, no Flower (Ray's start-up)."""
    bench.results["small_files"] = bench.attempt(
        "small checkpoints, files/s",
        lambda: small_files.run(work, args.quick, daemon=bench.daemon_reason is None),
    )
    clients = min(args.many_clients, 20) if args.quick else args.many_clients
    if clients and bench.daemon_reason is None:
        bench.results["many_clients"] = bench.attempt(
            f"{clients} clients on one daemon",
            lambda: many_clients.run_child(
                work, clients, args.many_clients_timeout, 2.0 if args.quick else 60.0
            ),
        )
    if args.quick or not args.flower_clients or bench.daemon_reason is not None:
        return
    reason = flower_sim.unavailable_reason(flower_sim.flwr_python())
    if reason:
        bench.results["skipped"].append(f"Flower simulation: {reason}")  # type: ignore[union-attr]
        return
    bench.results["flower_sim"] = bench.attempt(
        f"Flower simulation, {args.flower_clients} clients",
        lambda: flower_sim.run(
            work, args.flower_clients, 3, args.many_clients_timeout, flower_sim.flwr_python()
        ),
    )


def _get_best_sqlite(results: Result) -> tuple[int, str] | None:
    """(page size, journal mode) of the fastest raw SQLite insert in the limits grid."""
    lim = results.get("limits")
    sqlite = lim.get("sqlite") if isinstance(lim, dict) else None
    best = sqlite.get("best") if isinstance(sqlite, dict) else None
    if not isinstance(best, dict):
        return None
    return int(best["page_size"]), str(best["journal_mode"])


def _fresh(db: Path) -> None:
    db.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-journal", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def command_line(argv: list[str]) -> str:
    return f"cd {REPO_ROOT} && {sys.executable} -m benchmarks {shlex.join(argv)}".rstrip()


def run_trajectory(args: argparse.Namespace, out: Path) -> Result:
    """The real FedAvg trajectories (issues 14, 18): stored bytes through the engine for the CNN
    (every config, keep-all and keep-3) and the FederatedScope-style MLP (keep-all), then the
    codecs on the CNN. ``--quick`` uses tiny trajectories in ``out``; otherwise the cached ones
    in benchmarks/out. The rows go into results.json too: the targets table reads them."""
    from benchmarks import codec_compare, trajectory, trajectory_bench

    if args.quick:
        cnn, cnn_dir = trajectory.QUICK, out / "trajectory_quick"
        mlp, mlp_dir = trajectory.MLP_QUICK, out / "trajectory_mlp_quick"
    else:
        cnn, cnn_dir = trajectory.Settings(), trajectory.DEFAULT_DIR
        mlp, mlp_dir = trajectory.MLP, trajectory.MLP_DIR
    keeps = (0,) if args.quick else trajectory_bench.KEEPS
    stored = trajectory_bench.run(args.quick, cnn_dir, cnn, not args.no_restic, keeps=keeps)
    (out / "trajectory.json").write_text(json.dumps(stored, indent=1))
    names = trajectory_bench.QUICK_CONFIGS if args.quick else trajectory_bench.MLP_CONFIGS
    stored_mlp = trajectory_bench.run(args.quick, mlp_dir, mlp, False, names, (0,))
    (out / "trajectory_mlp.json").write_text(json.dumps(stored_mlp, indent=1))
    codecs = codec_compare.run(cnn_dir, not args.codecs_full, cnn)
    (out / "codecs.json").write_text(json.dumps(codecs, indent=1))
    return {
        "cnn": stored["rows"],
        "mlp": stored_mlp["rows"],
        "clients": {"cnn": stored["clients"], "mlp": stored_mlp["clients"]},
        "codecs": str(out / "codecs.json"),
    }


def trajectory_only(args: argparse.Namespace, out: Path, results_path: Path) -> int:
    from benchmarks import trajectory_report

    run_trajectory(args, out)
    md = results_path.read_text() if results_path.exists() else ""
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(trajectory_report.splice(md, trajectory_report.section(out)))
    print(f"[bench] wrote the trajectory section into {results_path}", file=sys.stderr)
    return 0


def render_only(raw: Path, results_path: Path, chart_path: Path) -> int:
    """Rebuild RESULTS.md and the PNG from a previous run (after editing ANALYSIS.md, say)."""
    from benchmarks import chart, report  # matplotlib only when rendering

    results = json.loads(raw.read_text())
    prof = results.get("profile")
    if isinstance(prof, dict) and "error" not in prof:
        for op in ("ingest", "restore"):  # the summaries follow profiling.py's current rules
            raw_profile = Path(prof[op]["raw"])
            if raw_profile.exists():
                prof[op]["by_thread"] = profiling.summarize(raw_profile)
                prof[op]["top_main"] = profiling.top_leaf_functions(raw_profile, "main thread")
        raw.write_text(json.dumps(results, indent=1, default=str))
    from benchmarks import trajectory_report

    chart.render(results, chart_path)
    md = report.render(results, chart_path, results_path.parent)
    results_path.write_text(trajectory_report.splice(md, trajectory_report.section(raw.parent)))
    print(f"[bench] re-rendered {results_path} from {raw}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw_argv)
    plan = make_plan(args)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "errors.log").unlink(missing_ok=True)
    results_path = (
        args.results
        or (out / "RESULTS.md" if args.quick else REPO_ROOT / "benchmarks" / "RESULTS.md")
    ).resolve()
    chart_path = (args.chart or results_path.with_name("results.png")).resolve()
    if args.render_only:
        return render_only(out / "results.json", results_path, chart_path)
    # SIGTERM (CI's timeout, a kill) unwinds like Ctrl-C, so scratch directories are removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.trajectory_only:
        return trajectory_only(args, out, results_path)
    work = args.work or Path(tempfile.mkdtemp(prefix="chunkd-bench-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    load_before = os.getloadavg()
    bench = Bench(plan, work, out)
    try:
        bench.run_checkpoints()
        bench.run_series()
        bench.results["contention"] = bench.attempt(  # issue 13; docs/DESIGN.md
            "store concurrency", lambda: contention.run(work, args.quick)
        )
        bench.results["db_overhead"] = bench.attempt(
            "database overhead", lambda: db_overhead.run(work, args.quick)
        )
        if plan.replica:  # docs/REPLICA.md; benchmarks/replica_bench.py
            bench.results["replica"] = bench.attempt(
                "replica upload", lambda: replica_bench.run(work, min(plan.series_mib, 32.0))
            )
        run_scale(bench, args, work)
        if not args.no_trajectory:
            bench.results["trajectory"] = bench.attempt(
                "FedAvg trajectory", lambda: run_trajectory(args, out)
            )
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    from benchmarks import chart, report  # matplotlib only when rendering

    bench.results["meta"] = {
        "command": command_line(raw_argv),
        "quick": args.quick,
        "config_default": configs.describe(),
        "started": started,
        "elapsed_s": time.time() - started,
        "plan": plan.__dict__,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "machine": report.describe_machine(work.parent),
        "restic_version": restic_bench.version() if bench.restic_reason is None else None,
    }
    (out / "results.json").write_text(json.dumps(bench.results, indent=1, default=str))
    chart_rel = bench.attempt("chart", lambda: chart.render(bench.results, chart_path))
    md = report.render(
        bench.results, chart_path if "error" not in chart_rel else None, results_path.parent
    )
    md += contention.render(bench.results.get("contention"))
    md += db_overhead.render(bench.results.get("db_overhead"))
    if "replica" in bench.results:
        md += replica_bench.render(bench.results.get("replica"))
    md += small_files.render(bench.results.get("small_files"))
    md += many_clients_report.render(bench.results.get("many_clients"))
    md += flower_sim.render(bench.results.get("flower_sim"))
    if not args.no_trajectory:
        from benchmarks import trajectory_report

        md = trajectory_report.splice(md, trajectory_report.section(out))
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(md)
    print(
        f"[bench] wrote {results_path} and {out / 'results.json'} in {time.time() - started:.0f}s",
        file=sys.stderr,
    )
    errors = bench.results["errors"]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
