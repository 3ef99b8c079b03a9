"""The "Real FedAvg trajectory" section of ``RESULTS.md``: codec comparison and stored bytes.

Rendered from ``benchmarks/out/codecs.json`` (:mod:`benchmarks.codec_compare`),
``benchmarks/out/trajectory.json`` and ``trajectory_mlp.json`` (:mod:`benchmarks.trajectory_bench`).
``python -m benchmarks`` appends it to the report it writes; ``python -m
benchmarks.trajectory_report`` replaces just this section (between its two marker comments) in an
existing ``RESULTS.md``.
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
#: Issue 18's targets, database bytes / plain .pth bytes with every round kept:
#: (trajectory, dtype, config, goal). "best" is max + delta.
TARGETS = (
    ("cnn", "fp32", "default", 0.76),
    ("cnn", "bf16", "default", 0.48),
    ("cnn", "fp32", "max+delta", 0.73),
    ("cnn", "bf16", "max+delta", 0.45),
    ("mlp", "fp32", "default", 0.72),
)
LABELS = {
    "cnn": "CNN trajectory (benchmarks.trajectory, 3 x 10 rounds)",
    "mlp": "FederatedScope-style MLP 1024 x 4 (12 rounds x 3 clients)",
}


def target_figures(
    rows: dict[str, list[dict[str, Any]]],
) -> list[tuple[str, float, dict[str, Any] | None]]:
    """(label, goal, the keep-all row measured for it or None) for each of :data:`TARGETS`."""
    out = []
    for traj, dtype, config, goal in TARGETS:
        hit = [
            r
            for r in rows.get(traj) or []
            if (r["dtype"], r["config"], r["keep"]) == (dtype, config, 0)
        ]
        label = f"{LABELS[traj]}, {dtype}, {config} config: stored / plain, every round kept"
        out.append((label, goal, hit[0] if hit else None))
    return out


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
        f"per client (`default` is `{traj.get('defaults', {}).get('text')}` at the time of the "
        "run). "
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


def targets(rows: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines = [
        "",
        "| target (keep-all) | goal | database / plain | chunk payload / plain |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, goal, r in target_figures(rows):
        if r is None:
            continue
        mark = "met" if r["ratio"] <= goal else "missed"
        lines.append(
            f"| {label} | <= {goal:.2f} | {r['ratio']:.3f} ({mark}) | "
            f"{_f(r.get('payload_ratio'))} |"
        )
    return lines if len(lines) > 3 else []


def _describe(meta: dict[str, Any]) -> str:
    s = meta.get("settings", {})
    acc = meta.get("global_test_accuracy", [])
    if not acc:
        return ""
    if s.get("model") == "mlp":
        what = (
            f"`python -m benchmarks.trajectory --model mlp` — FederatedScope's MLP "
            f"({s.get('hidden_layers')} hidden layers of {s.get('width')}, BatchNorm1d; "
            f"{meta.get('parameters', 0):,} parameters, {meta.get('file_bytes_fp32', 0):,} B "
            f"per fp32 file) trained with SGD (lr {s.get('lr')}, momentum {s.get('momentum')})"
        )
    else:
        what = (
            f"`python -m benchmarks.trajectory` — a CNN with BatchNorm "
            f"({meta.get('parameters', 0):,} parameters, {meta.get('file_bytes_fp32', 0):,} B "
            f"per fp32 file) trained with SGD (lr {s.get('lr')}, momentum {s.get('momentum')}, "
            f"weight decay {s.get('weight_decay')})"
        )
    return (
        f"Input: {what} on a learnable synthetic task, {s.get('clients')} clients x "
        f"{s.get('rounds')} rounds of FedAvg, one local epoch of {s.get('samples_per_client')} "
        f"samples per round; global test accuracy {acc[0]:.2f} -> {acc[-1]:.2f}. Every round, "
        f"at least {100 * meta.get('min_changed_fp32', 0):.4f}% of each client's fp32 weights "
        f"differ from its previous round ({100 * meta.get('min_changed_bf16', 0):.1f}% of the "
        "bf16 copies: many moves are below bf16's precision)."
    )


def section(out: Path = OUT) -> str:
    """The section's markdown, from whatever JSON results exist under ``out``."""
    codecs = _load(out / "codecs.json")
    traj = _load(out / "trajectory.json")
    mlp = _load(out / "trajectory_mlp.json")
    meta = (traj or codecs or {}).get("trajectory", {})
    lines = [BEGIN, "", "## Real FedAvg trajectories (issues 14 and 18)", "", _describe(meta)]
    if traj:
        lines += ["", "### Stored bytes through the engine", ""]
        lines.append("`python -m benchmarks.trajectory_bench`")
        lines += trajectory_table(traj)
    if mlp:
        lines += ["", _describe(mlp.get("trajectory", {})), ""]
        lines.append("`python -m benchmarks.trajectory_bench --model mlp`")
        lines += trajectory_table(mlp)
    lines += targets({"cnn": (traj or {}).get("rows", []), "mlp": (mlp or {}).get("rows", [])})
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
