"""chunkd.daemon.sdnotify against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from chunkd.daemon import sdnotify
from chunkd.daemon.sdnotify import Notifier, notify, watchdog_interval_s

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sd_notify is Linux")


def _receive(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    return sock.recv(4096)


@pytest.fixture
def short_dir(tmp_path: Path) -> Iterator[Path]:
    """AF_UNIX paths are limited to 107 bytes; a deep pytest tmp_path may not fit."""
    if len(str(tmp_path)) < 80:
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(prefix="sdn") as path:
        yield Path(path)


@pytest.fixture
def systemd(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A bound datagram socket, advertised through $NOTIFY_SOCKET like PID 1 does."""
    path = short_dir / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def test_ready_arrives(systemd: socket.socket) -> None:
    assert notify(sdnotify.READY) is True
    assert _receive(systemd) == b"READY=1"


def test_notifier_keeps_one_socket_for_many_messages(systemd: socket.socket) -> None:
    with Notifier() as notifier:
        assert notifier.enabled
        assert notifier.notify("READY=1\nSTATUS=watching 3 clients")
        assert notifier.notify(sdnotify.WATCHDOG)
        assert notifier.notify(sdnotify.STOPPING)
    assert _receive(systemd) == b"READY=1\nSTATUS=watching 3 clients"
    assert _receive(systemd) == b"WATCHDOG=1"
    assert _receive(systemd) == b"STOPPING=1"
    assert notifier.notify(sdnotify.WATCHDOG) is False, "closed: no send, no raise"
    notifier.close()  # idempotent


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"chunkd-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify(sdnotify.READY) is True
        assert _receive(sock) == b"READY=1"
    finally:
        sock.close()


def test_explicit_address_overrides_the_environment(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    path = short_dir / "other"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        with Notifier(str(path)) as notifier:
            assert notifier.notify(sdnotify.READY)
        assert _receive(sock) == b"READY=1"
    finally:
        sock.close()


@pytest.mark.parametrize("value", [None, "", "relative/notify", "vsock:2:1234"])
def test_not_under_systemd_is_a_quiet_no_op(
    value: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if value is None:
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    else:
        monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert notify(sdnotify.READY) is False
    with Notifier() as notifier:
        assert not notifier.enabled
        assert notifier.notify(sdnotify.READY) is False


def test_send_errors_return_false(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(short_dir / "missing"))
    assert notify(sdnotify.READY) is False

    # A socket file nobody listens on any more (systemd gone): ECONNREFUSED.
    stale = short_dir / "stale"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(stale))
    sock.close()
    monkeypatch.setenv("NOTIFY_SOCKET", str(stale))
    assert notify(sdnotify.READY) is False

    # A regular file where the socket should be.
    plain = short_dir / "plain"
    plain.write_text("")
    monkeypatch.setenv("NOTIFY_SOCKET", str(plain))
    assert notify(sdnotify.READY) is False


def test_unencodable_state_returns_false(systemd: socket.socket) -> None:
    assert notify("STATUS=\udcff") is False
    assert notify(sdnotify.READY) is True
    assert _receive(systemd) == b"READY=1"


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 30.0),
        ("30000000", "self", 30.0),
        ("30000000", "other", None),
        ("30000000", "not-a-pid", None),
        ("500000", None, 0.5),
        ("0", None, None),
        ("-5", None, None),
        ("thirty", None, None),
        (None, None, None),
    ],
)
def test_watchdog_interval(
    usec: str | None, pid: str | None, expected: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            value = {"self": str(os.getpid()), "other": str(os.getpid() + 1)}.get(value, value)
            monkeypatch.setenv(name, value)
    assert watchdog_interval_s() == expected
