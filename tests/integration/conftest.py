"""Shared harness of the framework-integration suite: the daemon suite's real ``chunkd serve``.

The :class:`DaemonProcess` factory of ``tests/daemon/conftest.py`` is loaded from that file (as
the reliability suite does), so these tests drive the daemon exactly as the others do. Helpers
here restore through the socket (``chunkd restore``), as a user would, and read what the log says
was ingested.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_DAEMON_HARNESS = Path(__file__).resolve().parents[1] / "daemon" / "conftest.py"
_spec = importlib.util.spec_from_file_location("chunkd_tests_daemon_harness", _DAEMON_HARNESS)
assert _spec is not None and _spec.loader is not None
_harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_harness)
DaemonProcess = _harness.DaemonProcess


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    yield from _harness.spawn_daemons(tmp_path)
