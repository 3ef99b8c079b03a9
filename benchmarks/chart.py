"""The PNG: stored bytes round by round per series, and throughput per system.

matplotlib is imported inside :func:`render` (and with the Agg backend) so that the benchmark
package imports without it and runs headless.
"""

from __future__ import annotations

import statistics
from pathlib import Path

Result = dict[str, object]
GIB = float(1 << 30)
SYSTEMS = (
    ("plain .pth", None),
    ("chunkd none", "chunkd_none"),
    ("chunkd default", "chunkd_default"),
    ("seed-style", "seed"),
    ("restic", "restic"),
)


def _cumulative(series: Result, key: str | None) -> list[float] | None:
    if key is None:
        total, out = 0, []
        for f in series["files"]:  # type: ignore[union-attr]
            total += int(f["disk_bytes"])
            out.append(total / GIB)
        return out
    data = series.get(key)
    if not isinstance(data, dict) or "rounds" not in data:
        return None
    field = "stored_bytes" if key == "restic" else "db_file_bytes"
    return [int(r[field]) / GIB for r in data["rounds"]]


def render(results: Result, path: Path) -> Result:
    import matplotlib  # optional (the bench extra): imported only to draw

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [s for s in results.get("series", []) if s.get("dtype") == "float32"]  # type: ignore[union-attr]
    if not series:
        series = list(results.get("series", []))[:3]  # type: ignore[call-overload]
    cols = max(1, len(series))
    fig = plt.figure(figsize=(4.2 * max(cols, 3), 8.0))
    grid = fig.add_gridspec(2, max(cols, 3))
    for i, s in enumerate(series):
        ax = fig.add_subplot(grid[0, i])
        for name, key in SYSTEMS:
            ys = _cumulative(s, key)
            if ys:
                ax.plot(range(1, len(ys) + 1), ys, marker="o", markersize=3, label=name)
        ax.set_title(f"{s['kind']} ({s['dtype']}, {s['size_mib']} MiB/round)", fontsize=10)
        ax.set_xlabel("round")
        ax.set_ylabel("stored GiB (cumulative)")
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=8)
    ax = fig.add_subplot(grid[1, :])
    labels, values = _throughput_bars(results)
    bars = ax.barh(
        labels,
        values,
        color=[
            "#4c72b0" if "chunkd" in lab else "#999999" if "limit" in lab else "#dd8452"
            for lab in labels
        ],
    )
    ax.bar_label(bars, fmt="%.0f", fontsize=8, padding=2)
    ax.invert_yaxis()
    ax.set_xlabel("MB/s (largest float32 checkpoint)")
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return {"path": str(path), "bytes": path.stat().st_size}


def _throughput_bars(results: Result) -> tuple[list[str], list[float]]:
    cks = [c for c in results.get("checkpoints", []) if c.get("dtype") == "float32"]  # type: ignore[union-attr]
    if not cks:
        return [], []
    c = max(cks, key=lambda c: c["size_mib"])
    lim = results.get("limits", {})
    out: list[tuple[str, object]] = []
    lib = c.get("chunkd_lib", {})
    if isinstance(lib, dict) and lib.get("ingest"):
        out.append(
            (
                "chunkd ingest (lib, default)",
                statistics.median(r["mb_per_s"] for r in lib["ingest"]),
            )
        )
        out.append(
            (
                "chunkd restore (lib, default)",
                statistics.median(r["mb_per_s"] for r in lib["restore"]),
            )
        )
    for label, path in (
        ("chunkd ingest (daemon)", ("daemon", "ingest_mb_per_s")),
        ("chunkd restore (daemon)", ("daemon", "restore_served_mb_per_s")),
        ("seed-style ingest", ("seed", "ingest", "mb_per_s")),
        ("seed-style restore", ("seed", "restore", "mb_per_s")),
        ("restic backup", ("restic", "backup_mb_per_s")),
        ("restic restore", ("restic", "restore_mb_per_s")),
    ):
        out.append((label, _get(c, path)))
    if isinstance(lim, dict) and "sqlite" in lim:
        out.append(("limit: SQLite 1 MiB blobs (best)", lim["sqlite"]["best"]["mb_per_s"]))
        out.append(("limit: copy + fsync", lim["copy_fsync"]["best_mb_per_s"]))
        out.append(("limit: write + fsync", lim["write_fsync"]["mb_per_s"]))
        out.append(("limit: SHA-256, 1 thread", lim["sha256_1_thread"]["mb_per_s"]))
    pairs = [(k, float(v)) for k, v in out if isinstance(v, int | float)]
    return [k for k, _ in pairs], [v for _, v in pairs]


def _get(d: object, path: tuple[str, ...]) -> object:
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d
