"""A thread that dies during a test fails that test, suite-wide (pyproject.toml filterwarnings).

Issue 17: both restore threads of a daemon test died with "dictionary changed size during
iteration" and the test passed; pytest only warned. This runs pytest, with this repository's own
configuration, on two tiny tests: the one whose thread raises must fail, the other must pass.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TINY_TESTS = """
import threading


def _iterate_while_growing():
    seen = {1: 1}
    for key in seen:
        seen[key + 1] = 1


def test_a_thread_of_mine_dies():
    thread = threading.Thread(target=_iterate_while_growing)
    thread.start()
    thread.join()


def test_a_thread_of_mine_succeeds():
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join()
"""


def test_a_thread_that_dies_fails_its_test(tmp_path):
    (tmp_path / "test_tiny.py").write_text(TINY_TESTS)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-c",
            str(ROOT / "pyproject.toml"),
            "--rootdir",
            str(tmp_path),
            "--basetemp",
            str(tmp_path / "basetemp"),
            str(tmp_path / "test_tiny.py"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED test_tiny.py::test_a_thread_of_mine_dies" in result.stdout, result.stdout
    assert "dictionary changed size during iteration" in result.stdout
    assert "1 failed, 1 passed" in result.stdout
