"""The "Real FedAvg trajectory" section of ``RESULTS.md``: codec comparison and stored bytes.

Rendered from ``benchmarks/out/codecs.json`` (:mod:`benchmarks.codec_compare`) and
``benchmarks/out/trajectory.json`` (:mod:`benchmarks.trajectory_bench`). ``python -m benchmarks``
appends it to the report it writes; ``python -m benchmarks.trajectory_report`` replaces just this
section (between its two marker comments) in an existing ``RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.runner import REPO_ROOT

OUT = REPO_ROOT / "benchmarks" / "out"
BEGIN = "<!-- trajectory section: python -m benchmarks.trajectory_report -->"
END = "<!-- end of trajectory section -->"
MODES = {
    "self": "self-contained",
    "prev": "vs previous round",
    "first": "vs round 1",
    "cross": "vs other client, same round",
    "chain": "as stored (r1 alone, then vs previous)",
}
#: the issue's targets: stored / plain over >= 10 rounds
TARGETS = {"default fp32": 0.70, "best fp32": 0.62, "best bf16": 0.35}


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _mb(x: float | None) -> str:
    return "-" if not x else f"{x:,.0f}"


def codec_table(codecs: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for dtype in ("fp32", "bf16"):
        rows = codecs.get(dtype)
        if not rows:
            continue
        lines += [
            "",
            f"**{dtype}** (client 0, chunks as ingest cuts them; MB/s of raw bytes: "
            "one thread wall-clock / two threads wall-clock / per CPU-second of one thread):",
            "",
            "| input | transform | coder | stored/raw | encode MB/s | decode MB/s |",
            "| --- | --- | --- | ---: | ---: | ---: |",
        ]
        for r in rows:
            enc = "/".join(_mb(r.get(k)) for k in ("enc_mb_s", "enc2_mb_s", "enc_cpu_mb_s"))
            dec = "/".join(_mb(r.get(k)) for k in ("dec_mb_s", "dec2_mb_s", "dec_cpu_mb_s"))
            if r["coder"] == "entropy":
                coder, enc, dec = "*order-0 entropy per byte plane (yardstick)*", "", ""
            else:
                coder = r["coder"]
            if "enc2_parallelism" in r:  # chunkd.codec rows: how busy two threads kept the cores
                enc += f" (2 thr: {r['enc2_parallelism']:.2f} cores)"
                dec += f" (2 thr: {r['dec2_parallelism']:.2f} cores)"
            lines.append(
                f"| {MODES.get(r['mode'], r['mode'])} | {r['transform']} | {coder} | "
                f"{_f(r['ratio'])} | {enc} | {dec} |"
            )
    return lines


def trajectory_table(traj: dict[str, Any]) -> list[str]:
    rows = traj.get("rows", [])
    configs = list(dict.fromkeys(r["config"] for r in rows))
    lines = [
        "",
        f"Database bytes / plain `.pth` bytes of the kept rounds, {traj.get('clients')} client(s) "
        f"x {traj.get('trajectory', {}).get('settings', {}).get('rounds')} rounds, one database "
        "per client (`default` is "
        f"`compression = {traj.get('defaults', {}).get('compression')!r}`, "
        f"`delta = {traj.get('defaults', {}).get('delta')}` at the time of the run). "
        "In brackets: the chunks' stored bytes alone (`chunk_data.data`), before SQLite rounds "
        "each chunk up to whole pages. Ingest and restore MB/s are of the whole series through "
        "the engine (restores are checked against the files' SHA-256).",
        "",
        "| config | fp32 keep-all | fp32 keep-3 | bf16 keep-all | bf16 keep-3 "
        "| ingest MB/s fp32 | restore MB/s fp32 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in configs:

        def cell(dtype: str, keep: int, key: str = "ratio", c: str = c) -> Any:
            hit = [r for r in rows if (r["config"], r["dtype"], r["keep"]) == (c, dtype, keep)]
            return hit[0].get(key) if hit else None

        def both(dtype: str, keep: int, cell: Any = cell) -> str:
            payload = cell(dtype, keep, "payload_ratio")
            return _f(cell(dtype, keep)) + (f" ({_f(payload)})" if payload is not None else "")

        lines.append(
            f"| {c} | {both('fp32', 0)} | {both('fp32', 3)} | {both('bf16', 0)} | "
            f"{both('bf16', 3)} | {_mb(cell('fp32', 0, 'ingest_mb_s'))} | "
            f"{_mb(cell('fp32', 0, 'restore_mb_s'))} |"
        )
    return lines


def targets(traj: dict[str, Any]) -> list[str]:
    rows = [
        r
        for r in traj.get("rows", [])
        if r["config"] not in ("zstd -19", "restic") and r["keep"] == 0
    ]
    if not rows:
        return []

    def pick(dtype: str, config: str | None) -> dict[str, Any] | None:
        hit = [r for r in rows if r["dtype"] == dtype and config in (None, r["config"])]
        return min(hit, key=lambda r: r["ratio"]) if hit else None

    figures = {
        "default fp32": pick("fp32", "default"),
        "best fp32": pick("fp32", None),
        "best bf16": pick("bf16", None),
    }
    lines = [
        "",
        "| target (keep-all) | goal | database / plain | chunk payload / plain | config |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for name, goal in TARGETS.items():
        r = figures[name]
        if r is None:
            continue
        mark = "met" if r["ratio"] <= goal else "missed"
        lines.append(
            f"| {name} | <= {goal:.2f} | {r['ratio']:.3f} ({mark}) | "
            f"{_f(r.get('payload_ratio'))} | {r['config']} |"
        )
    return lines


def section(out: Path = OUT) -> str:
    """The section's markdown, from whatever JSON results exist under ``out``."""
    codecs = _load(out / "codecs.json")
    traj = _load(out / "trajectory.json")
    meta = (traj or codecs or {}).get("trajectory", {})
    lines = [BEGIN, "", "## Real FedAvg trajectory (issue 14)", ""]
    if meta:
        s = meta.get("settings", {})
        acc = meta.get("global_test_accuracy", [])
        lines += [
            f"Input: `python -m benchmarks.trajectory` — a CNN with BatchNorm "
            f"({meta.get('parameters', 0):,} parameters, {meta.get('file_bytes_fp32', 0):,} B "
            f"per fp32 file) trained with SGD (lr {s.get('lr')}, momentum {s.get('momentum')}, "
            f"weight decay {s.get('weight_decay')}) on a learnable synthetic task, "
            f"{s.get('clients')} clients x {s.get('rounds')} rounds of FedAvg, one local epoch "
            f"of {s.get('samples_per_client')} samples per round; global test accuracy "
            f"{acc[0]:.2f} -> {acc[-1]:.2f}. Every round, at least "
            f"{100 * meta.get('min_changed_fp32', 0):.4f}% of each client's fp32 weights differ "
            f"from its previous round ({100 * meta.get('min_changed_bf16', 0):.1f}% of the bf16 "
            "copies: many moves are below bf16's precision)."
            if acc
            else "",
        ]
    if traj:
        lines += ["", "### Stored bytes through the engine", ""]
        lines.append("`python -m benchmarks.trajectory_bench`")
        lines += trajectory_table(traj)
        lines += targets(traj)
    if codecs:
        lines += [
            "",
            "### Codec comparison",
            "",
            f"`python -m benchmarks.codec_compare{' --quick' if codecs.get('quick') else ''}` "
            f"(load average {_load_text(codecs)}: speeds on this shared 2-core machine are "
            "indicative; ratios are exact).",
        ]
        lines += codec_table(codecs)
    analysis = REPO_ROOT / "benchmarks" / "TRAJECTORY.md"
    if analysis.exists():
        lines += ["", analysis.read_text().strip()]
    lines += ["", END, ""]
    return "\n".join(lines)


def _load_text(codecs: dict[str, Any]) -> str:
    before, after = codecs.get("loadavg_before"), codecs.get("loadavg_after")
    if not before or not after:
        return "not recorded"
    return f"{before[0]:.1f} before, {after[0]:.1f} after"


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


def splice(markdown: str, new_section: str) -> str:
    """``markdown`` with its trajectory section replaced by ``new_section`` (or appended)."""
    start = markdown.find(BEGIN)
    end = markdown.find(END)
    if start >= 0 and end > start:
        return markdown[:start] + new_section + markdown[end + len(END) :].lstrip("\n")
    return markdown.rstrip("\n") + "\n\n" + new_section


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=OUT, help="where the JSON results are")
    p.add_argument("--results", type=Path, default=REPO_ROOT / "benchmarks" / "RESULTS.md")
    args = p.parse_args(argv)
    md = args.results.read_text() if args.results.exists() else ""
    args.results.write_text(splice(md, section(args.out)))
    print(f"[trajectory] wrote the section into {args.results}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
