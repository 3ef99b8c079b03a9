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
#: Issue 18: the daemon's RssAnon at any model size, default config, retention included.
MEMORY_LIMIT_KIB = 200 * 1024
#: The series are stored with these configs (benchmarks.configs), keyed ``chunkd_<name>``.
SERIES_CONFIGS = ("none", "default")
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


#: Issue 18's sizes for the ingest and restore ratios (others measured are in the tables).
TARGET_SIZES_MIB = (256, 1024)


def _target_sizes(results: Result) -> list[int]:
    sizes = sorted(
        {int(c["size_mib"]) for c in results.get("checkpoints", []) if c["dtype"] == "float32"}  # type: ignore[union-attr]
    )
    wanted = [s for s in sizes if s in TARGET_SIZES_MIB]
    return wanted or sizes[-1:]


def _ratio_row(
    what: str, threshold: float, value: object, base: object, base_name: str, beside: str
) -> list[str]:
    if not isinstance(value, float) or not isinstance(base, float):
        return [what, f">= {threshold}x", "—", _status(None, beside or "not measured")]
    ratio = value / base
    return [
        what,
        f">= {threshold}x",
        f"{ratio:.2f}x ({_mbs(value)} vs {base_name} {_mbs(base)}){beside}",
        _status(ratio >= threshold),
    ]


def speed_targets(results: Result) -> list[list[str]]:
    """Issue 18: ingest vs raw SQLite, restore through the CLI vs a copy, per target size; the
    baselines are the paired ones run right after chunkd on the same file (else the limits')."""
    rows: list[list[str]] = []
    for size in _target_sizes(results):
        ck = _ck(results, size)
        sqlite = _get(ck, "baseline", "sqlite", "mb_per_s")
        if not isinstance(sqlite, float):
            sqlite = _get(results, "limits", "sqlite", "best", "mb_per_s")
        copy = _get(ck, "baseline", "copy_fsync", "user_space", "mb_per_s")
        if not isinstance(copy, float):
            copy = _get(results, "limits", "copy_fsync", "user_space", "mb_per_s")
        for config, threshold, daemon_key, suffix in (
            ("default", 0.5, "daemon", ""),
            ("none", 0.7, "daemon_none", "_none"),
        ):
            lib = _median(_get(ck, "chunkd_lib", f"ingest{suffix}"), "mb_per_s")
            daemon = _get(ck, daemon_key, "ingest_mb_per_s")
            value, beside = daemon, ""
            if isinstance(lib, float) and isinstance(sqlite, float):
                beside = f"; library {lib / sqlite:.2f}x"
            if not isinstance(daemon, float):
                value = lib
                beside = f" (library; daemon {_skip_reason(results, ck, daemon_key)})"
            rows.append(
                _ratio_row(
                    f"Ingest {size} MiB float32, {config} config (daemon's duration_ms) vs raw "
                    "SQLite 1 MiB-blob insert of the same size",
                    threshold,
                    value,
                    sqlite,
                    "SQLite",
                    beside,
                )
            )
        net = _get(ck, "daemon", "restore_cli_net_mb_per_s")
        lib_restore = _median(_get(ck, "chunkd_lib", "restore"), "mb_per_s")
        if isinstance(net, float):
            startup = float(_get(ck, "daemon", "cli_startup_s"))  # type: ignore[arg-type]
            served = _get(ck, "daemon", "restore_served_mb_per_s")
            beside = f"; CLI start-up {startup:.2f} s; served {_mbs(served)}"
            value: object = net
        else:
            value = lib_restore
            beside = f" (library; daemon {_skip_reason(results, ck, 'daemon')})"
        rows.append(
            _ratio_row(
                f"Restore {size} MiB float32 into a file through the CLI (wall minus start-up), "
                "default config, vs copy + fsync",
                0.5,
                value,
                copy,
                "copy",
                beside,
            )
        )
    return rows


def memory_targets(results: Result) -> list[list[str]]:
    rows: list[list[str]] = []
    limit = f"<= {_mib(MEMORY_LIMIT_KIB)}"
    for size in _target_sizes(results):
        ck = _ck(results, size)
        peaks = [_get(ck, "daemon", f"rss_anon_peak_{op}_kib") for op in ("ingest", "restore")]
        what = f"Daemon peak RssAnon, default config, ingest / restore of {size} MiB float32"
        if all(isinstance(p, int | float) for p in peaks):
            worst = max(float(p) for p in peaks)  # type: ignore[arg-type]
            rows.append(
                [
                    what,
                    limit,
                    " / ".join(_mib(p) for p in peaks),
                    _status(worst <= MEMORY_LIMIT_KIB),
                ]
            )
        else:
            rows.append([what, limit, "—", _status(None, _skip_reason(results, ck, "daemon"))])
    ret = results.get("retention")
    what = "Daemon peak RssAnon, default config, series with retention (backlog, then prunes)"
    if isinstance(ret, dict) and "rss_anon_peak_kib" in ret:
        peak = float(ret["rss_anon_peak_kib"])
        prune_peak = max(float(p["rss_anon_peak_kib"]) for p in ret["prunes"])
        rows.append(
            [
                what,
                limit,
                f"{_mib(peak)} ({ret['rounds']} rounds of {_bytes(ret['round_bytes'])}, keep "
                f"{ret['keep']}; {_mib(prune_peak)} during the prunes)",
                _status(peak <= MEMORY_LIMIT_KIB),
            ]
        )
    else:
        rows.append([what, limit, "—", _status(None, _retention_reason(results))])
    return rows


def _retention_reason(results: Result) -> str:
    ret = results.get("retention")
    if isinstance(ret, dict) and "error" in ret:
        return f"failed: {ret['error']}"
    return _skip_reason(results, None, "daemon")


def prune_targets(results: Result) -> list[list[str]]:
    """Issue 18: the database after a prune holds the kept rounds plus at most one round free."""
    ret = results.get("retention")
    threshold = "<= kept rounds + one round (free pages <= 1 round)"
    if not isinstance(ret, dict) or not ret.get("prunes"):
        return [
            ["Database after a prune", threshold, "—", _status(None, _retention_reason(results))]
        ]
    rows = []
    for label, prunes in (
        ("right after a backlog", [p for p in ret["prunes"] if p["backlog"]]),
        ("at steady state, worst", [p for p in ret["prunes"] if not p["backlog"]]),
    ):
        if not prunes:
            continue
        worst = max(prunes, key=lambda p: p["free_bytes"] / max(1, p["one_round_bytes"]))
        extra = worst["free_bytes"] / max(1, worst["one_round_bytes"])
        rows.append(
            [
                f"Database after a prune {label} (keep {ret['keep']}, default config)",
                threshold,
                f"kept + {extra:.2f} rounds free ({_bytes(worst['free_bytes'])} free of "
                f"{_bytes(worst['db_file_bytes'])}; one round = {_bytes(worst['one_round_bytes'])}"
                f" as stored)",
                _status(extra <= 1.0),
            ]
        )
    return rows


def trajectory_targets(results: Result) -> list[list[str]]:
    from benchmarks.trajectory_report import target_figures

    traj = results.get("trajectory")
    rows_in = traj if isinstance(traj, dict) else {}
    rows = []
    for label, goal, r in target_figures(rows_in):  # type: ignore[arg-type]
        if r is None:
            why = f"failed: {rows_in['error']}" if "error" in rows_in else "not measured"
            if not traj:
                why = "skipped (--no-trajectory)"
            rows.append([label, f"<= {goal:.2f}", "—", _status(None, why)])
            continue
        rows.append(
            [
                label,
                f"<= {goal:.2f}",
                f"{r['ratio']:.3f} (chunk payload {r['payload_ratio']:.3f})",
                _status(r["ratio"] <= goal),
            ]
        )
    return rows


def targets(results: Result) -> list[list[str]]:
    """Issue 18's targets first (default config unless a row names another), then the earlier
    issues' that still hold."""
    rows = speed_targets(results) + memory_targets(results) + prune_targets(results)
    rows += trajectory_targets(results)
    big = _largest(results)
    label = f"{big['size_mib']} MiB float32" if big else "largest float32"
    ingest = _median(_get(big, "chunkd_lib", "ingest"), "mb_per_s")
    seed = _get(big, "seed", "ingest", "mb_per_s")
    if ingest and isinstance(seed, float):
        ratio = ingest / seed
        rows.append(
            [
                f"Ingest {label}, default config (library) vs seed-style baseline",
                ">= 10x",
                f"{ratio:.1f}x ({_mbs(ingest)} vs {_mbs(seed)})",
                _status(ratio >= 10),
            ]
        )
    else:
        rows.append([f"Ingest {label} vs seed-style", ">= 10x", "—", _status(None, "not measured")])
    for s in results.get("series", []):  # type: ignore[union-attr]
        plain = sum(int(f["bytes"]) for f in s["files"])
        if s["kind"] == "frozen":
            for comp in SERIES_CONFIGS:
                stored = _get(s, f"chunkd_{comp}", "db_file_bytes")
                if isinstance(stored, int):
                    rows.append(
                        [
                            f"Frozen backbone, {s['dtype']}, {comp} config: stored "
                            "after 10 rounds / plain .pth",
                            "<= 0.25x",
                            f"{stored / plain:.3f}x ({_bytes(stored)} / {_bytes(plain)})",
                            _status(stored / plain <= 0.25),
                        ]
                    )
        if s["kind"] == "nonpart":
            for comp in SERIES_CONFIGS:
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
                            f"Repeated round, {s['dtype']}, {comp} config: DB growth / "
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
                _mbs(_median(lib.get("ingest_none"), "mb_per_s")),
                _mbs(_median(lib.get("restore"), "mb_per_s")),
                _mbs(_median(lib.get("restore_none"), "mb_per_s")),
                f"{_mbs(_get(c, 'daemon', 'ingest_mb_per_s'))} / "
                f"{_mbs(_get(c, 'daemon_none', 'ingest_mb_per_s'))}",
                f"{_mbs(_get(c, 'daemon', 'restore_served_mb_per_s'))} / "
                f"{_mbs(_get(c, 'daemon', 'restore_cli_mb_per_s'))} / "
                f"{_mbs(_get(c, 'daemon', 'restore_cli_net_mb_per_s'))}",
                f"{_mbs(_get(c, 'baseline', 'sqlite', 'mb_per_s'))} / "
                f"{_mbs(_get(c, 'baseline', 'copy_fsync', 'user_space', 'mb_per_s'))}",
                _mbs(_get(c, "seed", "ingest", "mb_per_s")),
                _mbs(_get(c, "seed", "restore", "mb_per_s")),
                _mbs(_get(c, "restic", "backup_mb_per_s")),
                _mbs(_get(c, "restic", "restore_mb_per_s")),
            ]
        )
    return _table(
        [
            "checkpoint",
            "chunkd ingest (lib, default)",
            "ingest (lib, none)",
            "restore (lib, default)",
            "restore (lib, none)",
            "daemon ingest (default / none)",
            "daemon restore (served / CLI / CLI minus start-up)",
            "paired: SQLite insert / copy + fsync",
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
                _mib(_max(lib.get("ingest_none"), "rss_anon_peak_kib")),
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
            "lib ingest (none)",
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
        for comp in SERIES_CONFIGS:
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
                cell(_get(s, "chunkd_default", "db_file_bytes")),
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
            "chunkd, default",
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
                    growth("chunkd_default", "db_growth_bytes"),
                    growth("seed", "db_growth_bytes"),
                    growth("restic", "growth_bytes"),
                ]
            )
    return _table(
        ["repeated round", ".pth size", "chunkd none", "chunkd default", "seed-style", "restic"],
        rows,
    )


def retention_section(results: Result) -> str:
    ret = results.get("retention")
    if not isinstance(ret, dict) or "prunes" not in ret:
        return f"Not measured: {_retention_reason(results)}"
    rows = [
        [
            str(p["after_round"]) + (" (backlog)" if p["backlog"] else ""),
            str(p["rounds"]),
            _bytes(p["db_file_bytes"]),
            _bytes(p["free_bytes"]),
            _bytes(p["one_round_bytes"]),
            f"{p['free_bytes'] / max(1, p['one_round_bytes']):.2f}",
            f"{float(p['seconds']):.2f} s",
            _mib(p["rss_anon_peak_kib"]),
        ]
        for p in ret["prunes"]
    ]
    intro = (
        f"A fresh daemon with the {ret['config']} config (`{ret['config_text']}`), "
        f"`chunk_keep_rounds = {ret['keep']}`, takes the {ret.get('series')} series "
        f"({ret['rounds']} rounds of {_bytes(ret['round_bytes'])}): rounds 1-{ret['backlog']} "
        "arrive before any prune (a daemon that was behind), then each later round is "
        "followed by one. Each prune is `chunkd prune --client`, the daemon's own "
        "retention code in its own process. One round = the largest kept round's stored "
        "bytes as ingested (each arrives stored whole). "
        f"Peak RssAnon over the whole run: {_mib(ret['rss_anon_peak_kib'])}."
    )
    return (
        intro
        + "\n\n"
        + _table(
            [
                "prune after round",
                "rounds kept",
                "database file",
                "free pages",
                "one round",
                "free / one round",
                "prune (CLI wall)",
                "daemon peak RssAnon",
            ],
            rows,
        )
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
        "chunkd runs its shipped defaults unless a row names another config: `default` = "
        f"`{meta.get('config_default', '?')}` (`chunkd.config.load_settings(None)`), "  # type: ignore[union-attr]
        "`none` = no compression, no delta. Issue 18's rows come first. Ingest and restore are "
        "paired with a raw SQLite 1 MiB-blob insert (the limits grid's best page size and "
        "journal mode) and a user-space copy + fsync of the same file, run right after chunkd; "
        "the CLI's start-up is `chunkd --version`, median of 3.",
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
        "with SQLite's durable commit, restore with an fsync of the output. Daemon (a fresh "
        "one per checkpoint and config): ingest figure from the `checkpoint.ingested` line's "
        "`duration_ms`; restore as the daemon's `restore.served` duration, as the CLI's wall "
        "time (includes starting Python) and as that wall time minus the CLI's start-up.",
        "",
        throughput_table(results),
        "",
        spread_table(results),
        "",
        "## Peak anonymous memory (RssAnon)",
        "",
        f"Target for the daemon (issue 18): {_mib(MEMORY_LIMIT_KIB)} at any model size with "
        "the default config, the recent-chunk cache (`delta_cache`) and retention included. "
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
        "## Retention in the daemon",
        "",
        retention_section(results),
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
