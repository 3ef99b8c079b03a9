"""The socket's ``.lock`` file lives only as long as the daemon holding it (issue 21, friction 9):
a daemon that fails to start after taking the lock removes it; one refused because another live
daemon holds it leaves that lock alone. Real ``chunkd serve`` processes and real sockets."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def serve(config: Path, timeout_s: float = 60) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in {"CHUNKD_CONFIG", "NOTIFY_SOCKET"}}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "chunkd.cli.main", "serve", "--config", str(config)],
        capture_output=True,
        env=env,
        timeout=timeout_s,
        check=False,
    )


def lock_of(sock: Path) -> Path:
    return Path(f"{sock}.lock")


def is_locked(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def config_with(tmp_path: Path, **keys: str) -> Path:
    config = tmp_path / "c.toml"
    (tmp_path / "fl").mkdir(exist_ok=True)
    body = {"watch_root": "fl", "socket": "run/c.sock", "log_format": "json", **keys}
    config.write_text("".join(f'{k} = "{v}"\n' for k, v in body.items()))
    return config


def test_failed_start_after_the_lock_removes_it(tmp_path: Path) -> None:
    """Bad config found after the lock (the socket's path is a regular file; a socket_group
    that does not exist): exit 78 and no ``.lock`` left beside the socket."""
    config = config_with(tmp_path, socket_group="no-such-group-chunkd-21")
    result = serve(config)
    assert result.returncode == 78, result.stderr
    assert b"socket_group" in result.stderr
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []

    (tmp_path / "run" / "c.sock").write_text("not a socket")
    result = serve(config_with(tmp_path))
    assert result.returncode == 78, result.stderr
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["c.sock"]


def test_failed_start_after_binding_removes_socket_and_lock(tmp_path: Path) -> None:
    """The daemon fails after the socket is bound (an explicit client directory that can never
    exist): the socket and the lock both go."""
    (tmp_path / "plain").write_text("")
    config = config_with(tmp_path)
    with open(config, "a") as f:
        f.write(f'[[clients]]\nid = "7"\ndir = "{tmp_path / "plain" / "site7"}"\n')
    result = serve(config)
    assert result.returncode == 78, result.stderr
    assert list((tmp_path / "run").iterdir()) == []


def test_socket_answered_by_another_process_removes_only_our_lock(tmp_path: Path) -> None:
    """Something live answers on the socket without holding the lock (a daemon whose lock file
    was deleted): refused with exit 7, its socket untouched, the lock taken meanwhile removed."""
    config = config_with(tmp_path)
    (tmp_path / "run").mkdir()
    sock = tmp_path / "run" / "c.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(os.fspath(sock))
        other.listen(8)
        result = serve(config)
        assert result.returncode == 7, result.stderr
        assert sock.is_socket()
        assert not lock_of(sock).exists()


def test_refused_second_daemon_leaves_the_live_daemons_lock(make_daemon) -> None:
    first = make_daemon()
    lock = lock_of(first.socket)
    assert lock.exists() and is_locked(lock)
    before = lock.stat().st_ino
    result = serve(first.config)
    assert result.returncode == 7, result.stderr
    assert lock.stat().st_ino == before and is_locked(lock)
    assert first.cli("status").returncode == 0
    # a clean stop takes its lock file with it, and the next daemon starts as usual
    assert first.stop() == 0
    assert not lock.exists() and not first.socket.exists()
    first.start()
    assert is_locked(lock)
