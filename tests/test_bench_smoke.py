"""The benchmark's CI smoke run: it must keep working, whatever its figures say.

``python -m benchmarks --quick`` measures tiny inputs with every code path the full run uses
(limits, chunkd's library path in fresh processes, the seed-style baseline, the series, the report
and the chart), so an API change that would break ``make bench`` fails here, in seconds. Missed
targets never fail it: a benchmark reports. The daemon and restic are left to the full run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


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
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = results.read_text()
    assert "## Targets" in text
    assert "| Ingest 4 MiB float32" in text
    assert "## Real FedAvg trajectory" in text  # issue 14's phase: engine series and codecs
    assert "chunkd.codec 'auto'" in text
    assert "## Store concurrency and retention" in text  # issue 13's figures
    assert "## Database overhead by model size" in text
    raw = json.loads((out / "results.json").read_text())
    assert raw["errors"] == []
    ingest = raw["checkpoints"][0]["chunkd_lib"]["ingest"][0]
    assert ingest["torch_imported"] is False  # the measured process never pays for torch
    assert all(all(s["chunkd_none"]["verified"].values()) for s in raw["series"])
