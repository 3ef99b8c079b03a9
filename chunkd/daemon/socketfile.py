"""The socket file: bind the daemon's Unix socket safely, and remove it only if still ours.

Supervisor's pattern, plus a lock. Under an ``flock`` on ``<socket>.lock``: an existing socket
that answers means another daemon (refuse with BusyError), one that does not is stale; the new
socket is bound at ``<socket>.<pid>.tmp``, given mode 0660 and ``socket_group``, then renamed over
the final name, so a client never sees a socket with the wrong mode, nor no socket at all. The
lock closes the race in which two daemons starting at once both find the old socket stale and
the loser serves on a name that no longer points to it. A path that exists and is not a socket
is never replaced (Litestream's "refuse, don't clobber").

The lock file lives only as long as its holder (issue 21: daemons that failed to start left
``.lock`` files behind). Whoever holds the ``flock`` removes the file before releasing it: on a
clean stop, and when the start fails after the lock was taken (socket answered by another daemon,
a path that is not a socket, a bad ``socket_group``, ...). A daemon refused because another holds
the lock never touches the file. Removing a lock file is safe only because taking one checks,
after the ``flock``, that the path still names the inode locked; otherwise the file was removed
by its holder meanwhile and the lock is taken again on the new file.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import os
import socket
import stat
from pathlib import Path
from typing import Final

from chunkd.config import MAX_SOCKET_PATH_BYTES
from chunkd.errors import BusyError, ConfigError

SOCKET_MODE: Final = 0o660
#: Connections the kernel queues before accept(); beyond it connect() waits or fails.
BACKLOG: Final = 128


def _group_id(group: str) -> int:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        if group.isdigit():
            return int(group)
        raise ConfigError(f"socket_group: no group named {group!r}") from None


def _answers(path: Path) -> bool:
    """Whether something accepts connections at ``path`` (a live daemon) or not (stale)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(os.fspath(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except TimeoutError:
            return True  # its backlog is full: alive, just busy
        except PermissionError:
            raise ConfigError(
                f"socket: {path} exists and this user may not connect to it to see whether a "
                "daemon owns it; remove it or fix its owner"
            ) from None
        return True


class SocketFile:
    """A listening socket bound safely at ``path``, and the lock that says it is ours."""

    def __init__(self, path: Path, listener: socket.socket, lock_fd: int) -> None:
        self.path = path
        self.listener = listener
        self._lock_fd = lock_fd
        st = path.stat()
        self._identity = (st.st_dev, st.st_ino)

    @classmethod
    def bind(cls, path: Path, group: str = "") -> SocketFile:
        """Bind (see the module docstring); BusyError if a live daemon owns ``path``."""
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        if len(os.fsencode(tmp)) > MAX_SOCKET_PATH_BYTES:
            raise ConfigError(f"socket: {path} is too long for a Unix socket path")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"socket: cannot use {path}: {e.strerror}") from None
        lock_path = lock_path_for(path)
        lock_fd = _take_lock(path, lock_path)
        try:
            _check_replaceable(path)
            listener = _listen_at(tmp, group)
            try:
                tmp.replace(path)
            except BaseException:
                listener.close()
                tmp.unlink(missing_ok=True)
                raise
            return cls(path, listener, lock_fd)
        except BaseException:
            _release_lock(lock_path, lock_fd)  # ours: a failed start leaves no lock file behind
            raise

    def close(self) -> None:
        """Close the listener; unlink the socket file only if it is still the one we bound."""
        self.listener.close()
        with contextlib.suppress(FileNotFoundError):
            st = self.path.stat()
            if (st.st_dev, st.st_ino) == self._identity:
                self.path.unlink()
        if self._lock_fd >= 0:
            _release_lock(lock_path_for(self.path), self._lock_fd)
            self._lock_fd = -1


def lock_path_for(path: Path) -> Path:
    """``<socket>.lock``: held (``flock``) by the daemon serving on ``path``."""
    return path.with_name(f"{path.name}.lock")


def _take_lock(path: Path, lock_path: Path) -> int:
    """An open descriptor holding the ``flock`` on ``lock_path``; BusyError if a live daemon
    holds it. Retried when the file was removed (by its releasing holder) between open and lock."""
    while True:
        try:
            lock_fd = os.open(lock_path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise ConfigError(f"socket: cannot use {path}: {e.strerror}") from None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)  # another daemon's lock: never removed here
            raise BusyError(f"another chunkd is serving on {path}") from None
        except BaseException:
            os.close(lock_fd)
            raise
        if _same_file(lock_path, lock_fd):
            return lock_fd
        os.close(lock_fd)  # an unlinked inode: its holder released it; lock the new file


def _same_file(path: Path, fd: int) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _release_lock(lock_path: Path, lock_fd: int) -> None:
    """Remove the lock file while still holding its ``flock`` (so no other daemon can hold it
    now), then release it. Only the file this descriptor locks is removed."""
    try:
        if _same_file(lock_path, lock_fd):
            with contextlib.suppress(FileNotFoundError):
                lock_path.unlink()
    except OSError:
        pass  # a lock file left behind is harmless: the next daemon takes it over
    finally:
        os.close(lock_fd)


def _check_replaceable(path: Path) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"socket: {path} exists and is not a socket; refusing to replace it")
    if _answers(path):
        raise BusyError(f"another chunkd is serving on {path}")


def _listen_at(tmp: Path, group: str) -> socket.socket:
    tmp.unlink(missing_ok=True)  # left by a crashed process that had our pid
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        try:
            listener.bind(os.fspath(tmp))
        except OSError as e:
            raise ConfigError(f"socket: cannot bind {tmp}: {e.strerror}") from None
        tmp.chmod(SOCKET_MODE)
        if group:
            gid = _group_id(group)
            try:
                os.chown(tmp, -1, gid)
            except OSError as e:
                raise ConfigError(
                    f"socket_group: cannot give {tmp} to group {group!r}: {e.strerror}"
                ) from None
        listener.listen(BACKLOG)
        listener.setblocking(False)
    except BaseException:
        listener.close()
        tmp.unlink(missing_ok=True)
        raise
    return listener
