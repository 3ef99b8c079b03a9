"""systemd's view of the daemon: READY=1, WATCHDOG=1 and STOPPING=1 on a real notify socket."""

from __future__ import annotations

import os
import socket
import time

import pytest

pytestmark = pytest.mark.slow


def receive_all(sock: socket.socket, until: str, timeout_s: float) -> list[str]:
    messages: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            messages.extend(sock.recv(4096).decode().splitlines())
        except TimeoutError:
            break
        if until in messages:
            break
    return messages


def test_ready_watchdog_and_stopping(make_daemon, tmp_path):
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify_path))
        daemon = make_daemon(start=False)
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "600000"}
        daemon.start(env=env)
        messages = receive_all(sock, "READY=1", timeout_s=20)
        assert "READY=1" in messages
        # READY=1 comes only after the socket is bound and the start-up scan is done
        names = [e["event"] for e in daemon.events()]
        assert names.index("socket.bound") < names.index("daemon.ready")
        assert "scan.completed" in names[: names.index("daemon.ready")]
        pings = [m for m in receive_all(sock, "", timeout_s=1.5) if m == "WATCHDOG=1"]
        assert len(pings) >= 2, "WATCHDOG=1 is sent at least every WATCHDOG_USEC/3"
        assert daemon.stop() == 0
        assert "STOPPING=1" in receive_all(sock, "STOPPING=1", timeout_s=5)
