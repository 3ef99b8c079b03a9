"""Run one measured operation in a fresh Python subprocess and read back its JSON result.

Why a subprocess per operation: peak memory is per process, so an operation measured in a
process that already ingested something (or imported torch to generate the input) would report
the leftovers of everything before it. The child prints one JSON object as its last stdout line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

#: The directory holding the ``benchmarks`` package; children run with it as cwd.
REPO_ROOT = Path(__file__).resolve().parent.parent


class ChildFailed(RuntimeError):
    """A measured subprocess exited non-zero or printed no result."""


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop("NOTIFY_SOCKET", None)  # a daemon under test must not talk to our systemd
    return env


def module_argv(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def run_json(
    argv: list[str], *, timeout_s: float = 3600, prefix: list[str] | None = None
) -> dict[str, object]:
    """Run ``argv`` (optionally under ``prefix``, e.g. a profiler) and parse its last line.

    Dirty pages left by earlier steps (generating inputs, the previous run) are flushed first:
    on ext4 an ``fsync`` commits the journal and can wait for other files' data too, so without
    this a measured ingest would pay for the writes of whatever ran before it.
    """
    os.sync()
    proc = subprocess.run(
        [*(prefix or []), *argv],
        cwd=REPO_ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise ChildFailed(
            f"{' '.join(argv[-6:])} exited {proc.returncode}: "
            f"{(proc.stderr or proc.stdout).strip()[-2000:]}"
        )
    return json.loads(lines[-1])


def emit(result: dict[str, object]) -> None:
    """The child's side: the one JSON result line."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
