"""Run socket clients as other users: tenants of a shared daemon, for the access tests.

CI runs as root, so a second uid needs no account: ``setpriv`` switches a child process to any
uid/gid and sets its supplementary groups exactly (those are what the daemon reads with
``SO_PEERGROUPS``). The uids used here have no passwd entry on purpose: the daemon must decide
from the connection, not from NSS.

The test root lives outside pytest's ``tmp_path`` (its parents are mode 0700, untraversable by
another uid); :func:`shared_root` makes and removes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

#: A tiny socket client for the child: one request per argv JSON, prints each answer line and,
#: for a frame stream, the SHA-256 of the payload. No chunkd import: the child is the tenant.
_CLIENT = r"""
import hashlib, json, socket, struct, sys
path = sys.argv[1]
for raw in sys.argv[2:]:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(60)
    s.connect(path)
    s.sendall(raw.encode() + b"\n")
    f = s.makefile("rb")
    line = json.loads(f.readline())
    if line.get("ok") and line["result"].get("transfer") == "frames":
        digest = hashlib.sha256()
        while True:
            (n,) = struct.unpack(">I", f.read(4))
            if n == 0:
                f.read(32)
                break
            if n == 0xFFFFFFFF:
                line = json.loads(f.readline())
                break
            digest.update(f.read(n))
        line["payload_sha256"] = digest.hexdigest()
    print(json.dumps(line), flush=True)
    s.close()
"""

#: Holds connections open: opens argv[2] connections, pings on each, reports how many were
#: accepted, then keeps them until its stdin closes.
_HOLDER = r"""
import json, socket, sys
path, count = sys.argv[1], int(sys.argv[2])
held, refused = [], 0
for _ in range(count):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(path)
    try:  # a refused connection is answered "busy" and closed: the send may fail
        s.sendall(b'{"cmd": "ping"}\n')
        line = s.makefile("rb").readline()
    except OSError:
        line = b""
    if line and json.loads(line).get("ok"):
        held.append(s)
    else:
        refused += 1
        s.close()
print(json.dumps({"held": len(held), "refused": refused}), flush=True)
sys.stdin.read()
"""

#: Holds restores unread: opens argv[3] connections, sends the restore request argv[2] on each
#: (with "transfer": "fd", a pipe's write end whose read end it keeps and never reads), reads
#: nothing of what comes back (it only peeks at the first line to count), reports, and keeps
#: everything until its stdin closes. A frames restore larger than the socket buffers or an fd
#: restore larger than a pipe then holds its request slot until the daemon gives up on it.
_RESTORE_HOLDER = r"""
import json, os, select, socket, sys, time
path, raw, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
by_fd = json.loads(raw).get("transfer") == "fd"
socks, pipes = [], []
for _ in range(count):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    line = raw.encode() + b"\n"
    r, w = os.pipe() if by_fd else (-1, -1)
    try:  # a refused connection is answered "busy" and closed: the send may fail
        if by_fd:
            socket.send_fds(s, [line], [w])
        else:
            s.sendall(line)
    except OSError:
        pass
    if by_fd:
        os.close(w)
        pipes.append(r)
    socks.append(s)
# An fd restore answers only at its end: no line within a second means it is being served.
deadline = time.monotonic() + (1.0 if by_fd else 30.0)
counts = {"held": 0, "busy_request": 0, "busy_connection": 0, "other": 0}
for s in socks:
    first = b""
    while b"\n" not in first:  # peek: what was sent stays unread
        if not select.select([s], [], [], max(0.0, deadline - time.monotonic()))[0]:
            break
        first = s.recv(1 << 16, socket.MSG_PEEK)
        if not first:
            break
    answer = json.loads(first.split(b"\n")[0]) if b"\n" in first else None
    if (answer is None and by_fd) or (answer and answer.get("ok")):
        counts["held"] += 1
    elif answer and answer["error"]["code"] == "busy":
        kind = "connection" if "connections" in answer["error"]["message"] else "request"
        counts["busy_" + kind] += 1
    else:
        counts["other"] += 1
print(json.dumps(counts), flush=True)
sys.stdin.read()
"""


def have_setpriv() -> bool:
    return shutil.which("setpriv") is not None


def require_root() -> None:
    """Tenants need root to exist (setpriv, chown); CI runs as root. Elsewhere: skip, saying so."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run clients as other uids (setpriv) and chown their dirs")


def as_user(uid: int, gid: int, groups: tuple[int, ...] = ()) -> list[str]:
    """The ``setpriv`` prefix that runs a command as ``uid``/``gid`` with exactly ``groups``."""
    if not have_setpriv():
        pytest.fail("setpriv (util-linux) is needed to run a client as a second uid")
    group_args = [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", *group_args, "--"]


def tenant_requests(
    socket_path: Path, who: tuple[int, int, tuple[int, ...]], *requests: dict[str, Any]
) -> list[dict[str, Any]]:
    """Send each request on its own connection as the tenant ``who`` = (uid, gid, groups)."""
    uid, gid, groups = who
    done = subprocess.run(
        [
            *as_user(uid, gid, groups),
            sys.executable,
            "-c",
            _CLIENT,
            str(socket_path),
            *[json.dumps(r) for r in requests],
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


@contextlib.contextmanager
def holding(
    socket_path: Path, who: tuple[int, int, tuple[int, ...]], count: int
) -> Iterator[dict[str, int]]:
    """A tenant process that holds up to ``count`` idle connections while the block runs."""
    uid, gid, groups = who
    proc = subprocess.Popen(
        [*as_user(uid, gid, groups), sys.executable, "-c", _HOLDER, str(socket_path), str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield json.loads(proc.stdout.readline())
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)


@contextlib.contextmanager
def holding_restores(
    socket_path: Path, who: tuple[int, int, tuple[int, ...]], count: int, restore: dict[str, Any]
) -> Iterator[dict[str, int]]:
    """A tenant process that sends ``count`` restores and never reads them, while the block runs.

    Yields how they were answered: ``held`` (being served), ``busy_request``, ``busy_connection``.
    """
    uid, gid, groups = who
    proc = subprocess.Popen(
        [
            *as_user(uid, gid, groups),
            sys.executable,
            "-c",
            _RESTORE_HOLDER,
            str(socket_path),
            json.dumps(restore),
            str(count),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield json.loads(proc.stdout.readline())
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)


@contextlib.contextmanager
def shared_root() -> Iterator[Path]:
    """A directory every uid can traverse (0711), removed afterwards."""
    require_root()
    root = Path(tempfile.mkdtemp(prefix="chunkd-tenants-"))
    try:
        root.chmod(0o711)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
