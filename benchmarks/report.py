"""RESULTS.md: every target beside its measured figure, and the tables behind them.

Ratios are computed against baselines measured in the same run (the machine's limits, the
seed-style store), never against remembered numbers, so a slower or faster machine moves both
sides. A target the run could not measure says why instead of PASS or MISS.
"""

from __future__ import annotations

import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

MIB = 1 << 20
MAX_CHUNK_BYTES = 1 << 20  # chunkd's default ``max_chunk_bytes``
MEMORY_LIMIT_KIB = (128 * MIB + 4 * MAX_CHUNK_BYTES) // 1024
Result = dict[str, object]


# -- machine -------------------------------------------------------------------------------------
def _cmd(*argv: str) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def describe_machine(scratch: Path) -> dict[str, str]:
    """What the figures were measured on; enough to tell two machines apart."""
    cpu, flags = "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and cpu == "?":
                cpu = value.strip()
            if key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    mem = _cmd("free", "-h").splitlines()
    df = _cmd("df", "-hT", str(scratch)).splitlines()
    versions = {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version}
    for module in ("torch", "numpy", "zstandard", "chunkd"):
        try:
            versions[module] = __import__(module).__version__
        except (ImportError, AttributeError):
            versions[module] = "?"
    return {
        "cpu": cpu,
        "cpu_flags": " ".join(sorted(flags & {"sha_ni", "avx2", "avx512f", "pclmulqdq", "vaes"})),
        "cores": str(os.cpu_count()),
        "memory": mem[1].split()[1] if len(mem) > 1 else "?",
        "disk": " ".join(df[1].split()[:3]) if len(df) > 1 else "?",
        "kernel": platform.release(),
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "interpreter": sys.executable,
    }


# -- formatting ----------------------------------------------------------------------------------
def _mbs(x: object) -> str:
    return f"{float(x):,.0f} MB/s" if isinstance(x, int | float) else "—"  # type: ignore[arg-type]


def _mib(kib: object) -> str:
    return f"{float(kib) / 1024:,.0f} MiB" if isinstance(kib, int | float) else "—"


def _bytes(n: object) -> str:
    if not isinstance(n, int | float):
        return "—"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{n:,.0f} B"


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _get(d: object, *path: str) -> object:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _median(runs: object, key: str) -> float | None:
    if not isinstance(runs, list):
        return None
    values = [float(r[key]) for r in runs if isinstance(r, dict) and key in r]
    return statistics.median(values) if values else None


def _max(runs: object, key: str) -> float | None:
    if not isinstance(runs, list):
        return None
    values = [float(r[key]) for r in runs if isinstance(r, dict) and key in r]
    return max(values) if values else None


def _status(ok: bool | None, why: str = "") -> str:
    if ok is None:
        return f"n/a{': ' + why if why else ''}"
    return "**PASS**" if ok else "**MISS**"


# -- targets -------------------------------------------------------------------------------------
def _largest(results: Result, dtype: str = "float32") -> Result | None:
    cks = [c for c in results.get("checkpoints", []) if c.get("dtype") == dtype]  # type: ignore[union-attr]
    return max(cks, key=lambda c: c["size_mib"]) if cks else None


def _ck(results: Result, size: int, dtype: str = "float32") -> Result | None:
    for c in results.get("checkpoints", []):  # type: ignore[union-attr]
        if c.get("size_mib") == size and c.get("dtype") == dtype:
            return c
    return None


def targets(results: Result) -> list[list[str]]:
    rows: list[list[str]] = []
    big = _largest(results)
    label = f"{big['size_mib']} MiB float32" if big else "largest float32"
    ingest = _median(_get(big, "chunkd_lib", "ingest"), "mb_per_s")
    sqlite_best = _get(results, "limits", "sqlite", "best")
    sqlite_mbs = _get(sqlite_best, "mb_per_s")
    if ingest and isinstance(sqlite_mbs, float):
        ratio = ingest / sqlite_mbs
        rows.append(
            [
                f"Ingest {label}, compression off vs raw SQLite 1 MiB-blob insert",
                ">= 0.7x",
                f"{ratio:.2f}x ({_mbs(ingest)} vs {_mbs(sqlite_mbs)}, "
                f"{_get(sqlite_best, 'page_size')} B pages, "
                f"{_get(sqlite_best, 'journal_mode')})",
                _status(ratio >= 0.7),
            ]
        )
    else:
        rows.append(
            [f"Ingest {label} vs raw SQLite", ">= 0.7x", "—", _status(None, "not measured")]
        )
    seed = _get(big, "seed", "ingest", "mb_per_s")
    if ingest and isinstance(seed, float):
        ratio = ingest / seed
        rows.append(
            [
                f"Ingest {label} vs seed-style baseline",
                ">= 10x",
                f"{ratio:.1f}x ({_mbs(ingest)} vs {_mbs(seed)})",
                _status(ratio >= 10),
            ]
        )
    else:
        rows.append([f"Ingest {label} vs seed-style", ">= 10x", "—", _status(None, "not measured")])
    copy = _get(results, "limits", "copy_fsync", "best_mb_per_s")
    restore = _median(_get(big, "chunkd_lib", "restore"), "mb_per_s")
    for what, value in (
        ("library", restore),
        ("daemon, restore.served", _get(big, "daemon", "restore_served_mb_per_s")),
        ("daemon, CLI wall time", _get(big, "daemon", "restore_cli_mb_per_s")),
    ):
        if isinstance(value, float) and isinstance(copy, float):
            rows.append(
                [
                    f"Restore {label} ({what}) vs copy + fsync",
                    ">= 0.5x",
                    f"{value / copy:.2f}x ({_mbs(value)} vs {_mbs(copy)})",
                    _status(value / copy >= 0.5),
                ]
            )
        else:
            rows.append(
                [
                    f"Restore {label} ({what}) vs copy + fsync",
                    ">= 0.5x",
                    "—",
                    _status(None, _skip_reason(results, big, "daemon")),
                ]
            )
    sizes = sorted({int(c["size_mib"]) for c in results.get("checkpoints", [])})  # type: ignore[union-attr]
    for size in sizes[:1] + sizes[-1:] if len(sizes) > 1 else sizes:
        ck = _ck(results, size)
        for op in ("ingest", "restore"):
            peak = _get(ck, "daemon", f"rss_anon_peak_{op}_kib")
            limit = f"<= {_mib(MEMORY_LIMIT_KIB)}"
            if isinstance(peak, int | float):
                rows.append(
                    [
                        f"Daemon peak RssAnon, {op} of {size} MiB float32",
                        limit,
                        _mib(peak),
                        _status(peak <= MEMORY_LIMIT_KIB),
                    ]
                )
            else:
                rows.append(
                    [
                        f"Daemon peak RssAnon, {op} of {size} MiB float32",
                        limit,
                        "—",
                        _status(None, _skip_reason(results, ck, "daemon")),
                    ]
                )
    for s in results.get("series", []):  # type: ignore[union-attr]
        plain = sum(int(f["bytes"]) for f in s["files"])
        if s["kind"] == "frozen":
            for comp in ("none", "auto"):
                stored = _get(s, f"chunkd_{comp}", "db_file_bytes")
                if isinstance(stored, int):
                    rows.append(
                        [
                            f"Frozen backbone, {s['dtype']}, compression {comp}: stored "
                            "after 10 rounds / plain .pth",
                            "<= 0.25x",
                            f"{stored / plain:.3f}x ({_bytes(stored)} / {_bytes(plain)})",
                            _status(stored / plain <= 0.25),
                        ]
                    )
        if s["kind"] == "nonpart":
            for comp in ("none", "auto"):
                per_round = _get(s, f"chunkd_{comp}", "rounds")
                if not isinstance(per_round, list):
                    continue
                costs = [
                    r["db_growth_bytes"] / r["bytes_in"]
                    for r, f in zip(per_round, s["files"], strict=False)
                    if f["repeated"]
                ]
                if costs:
                    worst = max(costs)
                    rows.append(
                        [
                            f"Repeated round, {s['dtype']}, compression {comp}: DB growth / "
                            "round size (worst of the repeats)",
                            "< 1%",
                            f"{100 * worst:.3f}%",
                            _status(worst < 0.01),
                        ]
                    )
    idle = _get(results, "daemon_idle_latency")
    if isinstance(idle, dict) and "latency_max_s" in idle:
        cpu = max(
            float(idle["idle_cpu_start"]["percent_of_core"]),
            float(idle["idle_cpu_after_work"]["percent_of_core"]),
        )
        rows.append(
            [
                "Daemon idle CPU",
                "< 1% of a core",
                f"{cpu:.2f}% (two {idle['idle_cpu_start']['seconds']:.0f} s windows)",
                _status(cpu < 1.0),
            ]
        )
        limit = float(idle["settle_delay_s"]) + 0.3
        worst = float(idle["latency_max_s"])
        rows.append(
            [
                f"File close -> checkpoint.ingested, {_bytes(idle['file_bytes'])} file",
                f"<= settle_delay + 300 ms = {limit:.2f} s",
                f"{worst:.3f} s worst, {float(idle['latency_median_s']):.3f} s median "
                f"(n={len(idle['latency_s'])})",
                _status(worst <= limit),
            ]
        )
    else:
        why = _skip_reason(results, None, "daemon")
        rows.append(["Daemon idle CPU", "< 1% of a core", "—", _status(None, why)])
        rows.append(
            [
                "File close -> checkpoint.ingested (10 MiB)",
                "<= settle_delay + 300 ms",
                "—",
                _status(None, why),
            ]
        )
    return rows


def _skip_reason(results: Result, entry: object, system: str) -> str:
    err = _get(entry, system, "error")
    if err:
        return f"failed: {err}"
    for s in results.get("skipped", []):  # type: ignore[union-attr]
        if system in s:
            return f"skipped: {s}"
    return "not measured"


# -- tables --------------------------------------------------------------------------------------
def throughput_table(results: Result) -> str:
    rows = []
    for c in results.get("checkpoints", []):  # type: ignore[union-attr]
        lib = c.get("chunkd_lib", {})
        rows.append(
            [
                f"{c['size_mib']} MiB {c['dtype']}",
                _mbs(_median(lib.get("ingest"), "mb_per_s")),
                _mbs(_get(lib, "ingest_auto", "mb_per_s")),
                _mbs(_median(lib.get("restore"), "mb_per_s")),
                _mbs(_get(lib, "restore_auto", "mb_per_s")),
                _mbs(_get(c, "daemon", "ingest_mb_per_s")),
                f"{_mbs(_get(c, 'daemon', 'restore_served_mb_per_s'))} / "
                f"{_mbs(_get(c, 'daemon', 'restore_cli_mb_per_s'))}",
                _mbs(_get(c, "seed", "ingest", "mb_per_s")),
                _mbs(_get(c, "seed", "restore", "mb_per_s")),
                _mbs(_get(c, "restic", "backup_mb_per_s")),
                _mbs(_get(c, "restic", "restore_mb_per_s")),
            ]
        )
    return _table(
        [
            "checkpoint",
            "chunkd ingest (lib, none)",
            "ingest (lib, auto)",
            "restore (lib, none)",
            "restore (lib, auto)",
            "daemon ingest",
            "daemon restore (served / CLI)",
            "seed ingest",
            "seed restore",
            "restic backup",
            "restic restore",
        ],
        rows,
    )


def spread_table(results: Result) -> str:
    rows = []
    for c in results.get("checkpoints", []):  # type: ignore[union-attr]
        lib = c.get("chunkd_lib", {})
        for op in ("ingest", "restore"):
            runs = lib.get(op) if isinstance(lib, dict) else None
            if isinstance(runs, list) and runs:
                cpu = _median(runs, "cpu_s")
                per_gb = f"{cpu / (int(c['bytes']) / 1e9):.2f}" if cpu is not None else "—"
                rows.append(
                    [
                        f"{c['size_mib']} MiB {c['dtype']}",
                        op,
                        ", ".join(f"{float(r['mb_per_s']):,.0f}" for r in runs),
                        per_gb,
                        f"{int(c['bytes']) / 1e6 / cpu:,.0f} MB/s" if cpu else "—",
                    ]
                )
    return _table(
        [
            "checkpoint",
            "library op",
            "each repeat (MB/s)",
            "CPU s per GB (median)",
            "CPU-bound ceiling on one core",
        ],
        rows,
    )


def memory_table(results: Result) -> str:
    rows = []
    for c in results.get("checkpoints", []):  # type: ignore[union-attr]
        lib = c.get("chunkd_lib", {})
        rows.append(
            [
                f"{c['size_mib']} MiB {c['dtype']}",
                _mib(_max(lib.get("ingest"), "rss_anon_peak_kib")),
                _mib(_get(lib, "ingest_precreated", "rss_anon_peak_kib")),
                _mib(_max(lib.get("restore"), "rss_anon_peak_kib")),
                _mib(_get(lib, "ingest_auto", "rss_anon_peak_kib")),
                _mib(_get(c, "daemon", "rss_anon_idle_kib")),
                _mib(_get(c, "daemon", "rss_anon_peak_ingest_kib")),
                _mib(_get(c, "daemon", "rss_anon_peak_restore_kib")),
                _mib(_get(c, "seed", "ingest", "rss_anon_peak_kib")),
                _mib(_get(c, "seed", "restore", "rss_anon_peak_kib")),
            ]
        )
    return _table(
        [
            "checkpoint",
            "lib ingest (new DB)",
            "lib ingest (existing DB)",
            "lib restore",
            "lib ingest (auto)",
            "daemon idle",
            "daemon ingest",
            "daemon restore",
            "seed ingest",
            "seed restore",
        ],
        rows,
    )


def limits_table(results: Result) -> str:
    lim = results.get("limits")
    if not isinstance(lim, dict) or "error" in lim:
        return f"Not measured: {_get(lim, 'error') or 'skipped'}"
    rows = []
    for key, value in lim.items():
        if key.startswith("sha256"):
            rows.append(
                [
                    f"SHA-256 ({key.split('_', 1)[1].replace('_', ' ')})",
                    _mbs(value["mb_per_s"]),
                    _bytes(value["bytes"]),
                ]
            )
    for run in lim["sqlite"]["runs"]:
        best = " (best)" if run == lim["sqlite"]["best"] else ""
        rows.append(
            [
                f"SQLite 1 MiB blobs, page {run['page_size']}, {run['journal_mode']}, "
                f"synchronous=FULL{best}",
                _mbs(run["mb_per_s"]),
                _bytes(run["bytes"]),
            ]
        )
    rows.append(
        [
            "write + fsync (1 MiB writes)",
            _mbs(lim["write_fsync"]["mb_per_s"]),
            _bytes(lim["write_fsync"]["bytes"]),
        ]
    )
    cp = lim["copy_fsync"]
    rows.append(
        [
            "copy checkpoint + fsync, user space (1 MiB read/write)",
            _mbs(cp["user_space"]["mb_per_s"]),
            _bytes(cp["user_space"]["bytes"]),
        ]
    )
    rows.append(
        [
            "copy checkpoint + fsync, kernel (copy_file_range)",
            _mbs(cp["kernel"]["mb_per_s"]),
            _bytes(cp["kernel"]["bytes"]),
        ]
    )
    return _table(["limit", "throughput", "bytes"], rows)


def storage_table(results: Result) -> str:
    rows = []
    for s in results.get("series", []):  # type: ignore[union-attr]
        plain = sum(int(f["disk_bytes"]) for f in s["files"])

        def cell(stored: object, plain: int = plain) -> str:
            if not isinstance(stored, int):
                return "—"
            return f"{_bytes(stored)} ({stored / plain:.3f}x)"

        ratios = []
        for comp in ("none", "auto"):
            d = s.get(f"chunkd_{comp}", {})
            if isinstance(d, dict) and "dedup_ratio" in d:
                ok = all(d.get("verified", {}).values())
                ratios.append(
                    f"{comp}: dedup {d['dedup_ratio']:.2f}x, compression "
                    f"{d['compression_ratio']:.2f}x{'' if ok else ', RESTORE MISMATCH'}"
                )
        rows.append(
            [
                f"{s['kind']} {s['dtype']}",
                _bytes(plain),
                cell(_get(s, "chunkd_none", "db_file_bytes")),
                cell(_get(s, "chunkd_auto", "db_file_bytes")),
                cell(_get(s, "seed", "db_file_bytes")),
                cell(_get(s, "restic", "stored_bytes")),
                "; ".join(ratios),
            ]
        )
    return _table(
        [
            "series (10 rounds)",
            "plain .pth on disk",
            "chunkd, none",
            "chunkd, auto",
            "seed-style",
            "restic (auto)",
            "chunkd ratios",
        ],
        rows,
    )


def repeated_table(results: Result) -> str:
    rows = []
    for s in results.get("series", []):  # type: ignore[union-attr]
        if s["kind"] != "nonpart":
            continue
        for i, f in enumerate(s["files"]):
            if not f["repeated"]:
                continue

            def growth(
                system: str, key: str, i: int = i, s: Result = s, size: int = int(f["bytes"])
            ) -> str:
                per = _get(s, system, "rounds")
                if not isinstance(per, list) or i >= len(per):
                    return "—"
                g = per[i][key]
                return f"{_bytes(g)} ({100 * g / size:.3f}%)"

            rows.append(
                [
                    f"{s['dtype']} round {f['round']}",
                    _bytes(f["bytes"]),
                    growth("chunkd_none", "db_growth_bytes"),
                    growth("chunkd_auto", "db_growth_bytes"),
                    growth("seed", "db_growth_bytes"),
                    growth("restic", "growth_bytes"),
                ]
            )
    return _table(
        ["repeated round", ".pth size", "chunkd none", "chunkd auto", "seed-style", "restic"], rows
    )


def profile_section(results: Result) -> str:
    prof = results.get("profile")
    if not isinstance(prof, dict) or "error" in prof:
        return f"Not profiled: {_get(prof, 'error') or 'skipped (--quick or --no-profile)'}"
    parts = [
        f"py-spy `record --native --threads --idle --rate {prof['rate_hz']}` over the "
        f"{prof['size_mib']} MiB float32 ingest and restore, each in its own child process "
        "(the profiled runs are slower than the timed ones; the shares are what matter). "
        "Seconds are samples / rate, per thread."
    ]
    for op in ("ingest", "restore"):
        p = prof[op]
        parts.append(f"\n**{op}** (profiled run: {float(p['seconds_profiled']):.2f} s)\n")
        rows = []
        for thread, cats in p["by_thread"].items():
            total = sum(cats.values()) or 1.0
            for cat, sec in cats.items():
                if sec / total >= 0.02:
                    rows.append([thread, cat, f"{sec:.2f} s", f"{100 * sec / total:.0f}%"])
        parts.append(_table(["thread", "where", "time", "share of thread"], rows))
        parts.append(
            "\nTop leaf frames, main thread: "
            + ", ".join(f"`{name}` {sec:.2f} s" for name, sec in p["top_main"])
        )
    return "\n".join(parts)


def render(results: Result, chart: Path | None, results_dir: Path) -> str:
    meta = results.get("meta", {})
    machine = meta.get("machine", {}) if isinstance(meta, dict) else {}
    when = datetime.fromtimestamp(float(meta.get("started", 0)), tz=timezone.utc)  # type: ignore[union-attr, arg-type]
    plan = meta.get("plan", {})  # type: ignore[union-attr]
    quick = " (--quick smoke run)" if meta.get("quick") else ""  # type: ignore[union-attr]
    elapsed = float(meta.get("elapsed_s", 0))  # type: ignore[union-attr, arg-type]
    out = [
        "# chunkd benchmarks",
        "",
        f"Generated by `python -m benchmarks` on {when:%Y-%m-%d %H:%M} UTC in "
        f"{elapsed:.0f} s{quick}. A benchmark reports; it never fails CI. Every ratio is "
        "against a baseline measured in this same run.",
        "",
        "## Targets",
        "",
        _table(["target", "threshold", "measured", "status"], targets(results)),
        "",
    ]
    if chart is not None:
        out += [
            f"![stored bytes per round and throughput per system]"
            f"({os.path.relpath(chart, results_dir)})",
            "",
        ]
    out += [
        "## Throughput (MB/s = 10^6 bytes/s of .pth file)",
        "",
        "Library path: a fresh process per operation, median of the repeats; ingest ends "
        "with SQLite's durable commit, restore with an fsync of the output. Daemon: ingest "
        "figure from the `checkpoint.ingested` line's `duration_ms`; restore as the daemon's "
        "`restore.served` duration and as the CLI's wall time (includes starting Python).",
        "",
        throughput_table(results),
        "",
        spread_table(results),
        "",
        "## Peak anonymous memory (RssAnon)",
        "",
        f"Target for the daemon: 128 MiB + 4 x max_chunk_bytes = {_mib(MEMORY_LIMIT_KIB)}. "
        "Sampled every 10 ms from `/proc/<pid>/status` (RssAnon has no kernel high-water "
        "mark; VmHWM/ru_maxrss count file pages too). 'new DB' = the first ingest into a "
        "database created by that same connection; 'existing DB' = the database was created "
        "(empty) by an earlier process.",
        "",
        memory_table(results),
        "",
        "## Storage after 10 rounds",
        "",
        f"Each series: 10 rounds of a {plan.get('series_mib', '?')} MiB model "  # type: ignore[union-attr]
        "(backbone 90% of the bytes, head 10%). fedavg: every weight moves each round; "
        "frozen: only the head moves; nonpart: rounds 3, 5, 6, 8, 10 re-save the previous "
        "model. chunkd bytes = the database file; restic = the repository directory.",
        "",
        storage_table(results),
        "",
        "Repeated (non-participating) rounds, cost of each:",
        "",
        repeated_table(results),
        "",
        "## Machine limits (same run)",
        "",
        limits_table(results),
        "",
        "## Where the time goes",
        "",
        profile_section(results),
        "",
    ]
    analysis = results_dir / "ANALYSIS.md"
    if analysis.exists() and not meta.get("quick"):  # type: ignore[union-attr]
        out += [analysis.read_text().strip(), ""]
    skipped = list(results.get("skipped", []))  # type: ignore[call-overload]
    errors = list(results.get("errors", []))  # type: ignore[call-overload]
    out += ["## Skipped and failed", ""]
    out += [f"- skipped: {s}" for s in skipped] or ["- nothing skipped"]
    out += [f"- FAILED: {e}" for e in errors]
    restic = meta.get("restic_version")  # type: ignore[union-attr]
    load = [meta.get("loadavg_before"), meta.get("loadavg_after")]  # type: ignore[union-attr]
    machine = {
        **machine,
        "load average (1, 5, 15 min) at start / end": " / ".join(
            ", ".join(f"{x:.2f}" for x in la) if la else "?" for la in load
        ),
    }
    out += [
        "",
        "## Machine and command",
        "",
        _table(["", ""], [[k, v] for k, v in machine.items()] + [["restic", restic or "not used"]]),
        "",
        "Run as:",
        "",
        "```sh",
        "make bench   # = " + str(meta.get("command")),
        "```",
        "",  # type: ignore[union-attr]
        "Inputs were generated in a scratch directory under /tmp and deleted afterwards; "
        "the checkpoint files were in the page cache when read (written just before, as a "
        "training process leaves them). Raw figures: `benchmarks/out/results.json`.",
        "",
    ]
    if shutil.which("restic") is None:
        out.append("(restic is not installed on this machine.)")
    return "\n".join(out)
