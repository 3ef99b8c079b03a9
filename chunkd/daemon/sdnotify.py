"""The sd_notify(3) datagram, without libsystemd or a Python dependency.

The unit is ``Type=notify`` (docs/SPEC.md, "systemd"): systemd considers chunkd started only on
``READY=1`` (socket bound, start-up scan done), restarts it when ``WATCHDOG=1`` stops arriving and
shows ``STOPPING=1`` while it drains. The protocol is one datagram of ``KEY=VALUE`` lines to the
AF_UNIX socket named by ``$NOTIFY_SOCKET``, so a few lines of :mod:`socket` replace a C library.

Notification is best effort by design: outside systemd (a terminal, the tests, another supervisor)
the variable is unset and every call is a cheap no-op, and a failed send must never take the daemon
down, so nothing here raises or logs; callers get ``False``. The unit has ``NotifyAccess=main``:
only the main process may notify (any of its threads; never a worker process).
``PrivateNetwork=yes`` does not get in the way: ``/run/systemd/notify`` is a filesystem socket,
reachable from any network namespace, and AF_UNIX is the one family the unit allows.
"""

from __future__ import annotations

import os
import socket
from types import TracebackType

__all__ = ["READY", "STOPPING", "WATCHDOG", "Notifier", "notify", "watchdog_interval_s"]

READY = "READY=1"
STOPPING = "STOPPING=1"
WATCHDOG = "WATCHDOG=1"

#: A stuck PID 1 with a full receive queue must not hang the watchdog loop or shutdown forever.
_SEND_TIMEOUT_S = 1.0


def _socket_address(raw: str | None) -> str | None:
    """``$NOTIFY_SOCKET`` → a ``sendto`` address; ``None`` for unset or unsupported forms.

    ``@name`` is a Linux abstract socket (leading NUL). Relative paths and ``vsock:`` (systemd 254+,
    for VMs) are not for us: a daemon on the host is always given an absolute path or ``@``.
    """
    if not raw:
        return None
    if raw.startswith("@"):
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    return None


class Notifier:
    """One datagram socket kept for the daemon's lifetime, so a watchdog ping is one ``sendto``.

    The address is read once, at construction: systemd sets it before exec and it never changes.
    The socket is unconnected on purpose: each ``sendto`` resolves the path again, which survives
    ``systemctl daemon-reexec`` re-creating ``/run/systemd/notify``. Any thread of the main process
    may call :meth:`notify`; there is no lock, so a signal handler can send ``STOPPING=1`` even
    while the main thread is mid-ping.
    """

    __slots__ = ("_address", "_sock")

    def __init__(self, address: str | None = None) -> None:
        raw = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._address = _socket_address(raw)
        self._sock: socket.socket | None = None
        if self._address is not None:
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            except OSError:
                self._address = None
            else:
                sock.settimeout(_SEND_TIMEOUT_S)
                self._sock = sock

    @property
    def enabled(self) -> bool:
        """Whether a supervisor asked for notifications (``Type=notify`` under systemd)."""
        return self._sock is not None

    def notify(self, state: str) -> bool:
        """Send ``state`` (newline-separated ``KEY=VALUE`` lines); ``True`` if it was sent whole."""
        sock, address = self._sock, self._address
        if sock is None or address is None:
            return False
        try:
            payload = state.encode("utf-8")
            return sock.sendto(payload, address) == len(payload)
        except (OSError, UnicodeError):
            return False

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> Notifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def notify(state: str) -> bool:
    """One-shot :meth:`Notifier.notify`; ``False`` (and no socket at all) when not under systemd."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return False
    with Notifier() as notifier:
        return notifier.notify(state)


def watchdog_interval_s() -> float | None:
    """systemd's ``WatchdogSec=`` in seconds, or ``None`` when no watchdog applies to this process.

    Ping at about half of it, as sd_watchdog_enabled(3) advises, so one slow tick is not a restart.
    ``$WATCHDOG_PID``, when set, names the process the watchdog is meant for: a child that
    inherited the environment must not ping on its parent's behalf.
    """
    pid = os.environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None
