"""The benchmark's CI smoke run: it must keep working, whatever its figures say.

``python -m benchmarks --quick`` measures tiny inputs with every code path the full run uses
(limits, chunkd's library path in fresh processes with the shipped defaults and with `none`, the
series, both FedAvg trajectories, the report and the chart), so an API change that would break
``make bench`` fails here, in well under a minute. Missed targets never fail it: a benchmark
reports. The daemon, restic, the seed-style baseline and the S3 server are left to the full run
(``--quick`` without ``--no-daemon`` tries the daemon's phases by hand).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = ("none", "default")


def test_quick_benchmark_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "out"
    results = tmp_path / "RESULTS.md"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--no-restic",
            "--no-daemon",
            "--out",
            str(out),
            "--results",
            str(results),
            "--work",
            str(tmp_path / "work"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,  # a hang detector; the run takes ~30-60 s on a loaded 2-core machine
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = results.read_text()
    assert "## Targets" in text
    # issue 18's rows, with the shipped config named and a figure beside each threshold
    assert "`default` = `compression='auto', delta=True, delta_cache=64 MiB`" in text
    assert "| Ingest 2 MiB float32, default config" in text
    assert "| Ingest 2 MiB float32, none config" in text
    assert "| Restore 2 MiB float32 into a file through the CLI" in text
    assert "FederatedScope-style MLP 1024 x 4 (12 rounds x 3 clients), fp32, default config" in text
    assert "CNN trajectory (benchmarks.trajectory, 3 x 10 rounds), bf16, max+delta config" in text
    assert "## Real FedAvg trajectories" in text  # engine series (CNN and MLP) and codecs
    assert "chunkd.codec 'auto'" in text
    assert "## Store concurrency and retention" in text  # issue 13's figures
    assert "## Database overhead by model size" in text
    raw = json.loads((out / "results.json").read_text())
    assert raw["errors"] == []
    ck = raw["checkpoints"][0]
    ingest = ck["chunkd_lib"]["ingest"][0]
    assert ingest["torch_imported"] is False  # the measured process never pays for torch
    assert (ingest["compression"], ingest["delta"]) == ("auto", True)  # the shipped defaults
    assert ck["chunkd_lib"]["ingest_none"][0]["compression"] == "none"
    assert ck["baseline"]["sqlite"]["mb_per_s"] > 0  # paired with chunkd's figures
    assert all(all(s[f"chunkd_{c}"]["verified"].values()) for s in raw["series"] for c in CONFIGS)
    for trajectory in ("cnn", "mlp"):
        rows = raw["trajectory"][trajectory]
        assert {r["config"] for r in rows} >= {"none", "default"}
        assert all(0 < r["ratio"] < 2 for r in rows)
