"""What the CLI tests share: a real ``chunkd serve`` (the harness of ``tests/daemon``, loaded from
that file so that both suites drive the daemon identically), a ``chunkd`` subprocess runner, and
small real checkpoints."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

_HARNESS = Path(__file__).resolve().parents[1] / "daemon" / "conftest.py"
_spec = importlib.util.spec_from_file_location("chunkd_tests_cli_daemon_harness", _HARNESS)
assert _spec is not None and _spec.loader is not None
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)
DaemonProcess = harness.DaemonProcess

REPO = Path(__file__).resolve().parents[2]


def cli_env(home: Path) -> dict[str, str]:
    """The environment of a ``chunkd`` run: this checkout's code, no user config or notify."""
    env = {k: v for k, v in os.environ.items() if k not in {"CHUNKD_CONFIG", "NOTIFY_SOCKET"}}
    env["CHUNKD_HOME"] = str(home)
    env["PYTHONPATH"] = str(REPO)
    return env


def run_chunkd(
    *args: str | Path, cwd: Path, input_bytes: bytes | None = None, timeout_s: float = 120
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "chunkd.cli.main", *map(str, args)],
        capture_output=True,
        input=input_bytes,
        cwd=cwd,
        env=cli_env(cwd),
        timeout=timeout_s,
        check=False,
    )


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    yield from harness.spawn_daemons(tmp_path)


@pytest.fixture
def chunkd_run() -> Callable[..., subprocess.CompletedProcess[bytes]]:
    """:func:`run_chunkd` for the test modules (conftest is not importable by name)."""
    return run_chunkd
