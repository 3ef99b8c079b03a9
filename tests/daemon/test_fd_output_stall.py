"""A passed descriptor that another writer keeps full cannot hold a restore past its timeout.

``"transfer": "fd"`` writes into a descriptor the client owns too. Waiting for ``poll`` to say
"writable" and then writing PIPE_BUF bytes is not enough: the client can keep its own copy of
the pipe's write end and a writer of its own blocked on it, so the room that woke the daemon is
gone again before the daemon's write, which then blocks with no timeout at all; once the
client stops reading, the restore holds its request slot, its worker thread and its round's
lease forever (issue 19). Real pipes and sockets, a real server, real databases.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from chunkd.daemon.server import ServerLimits
from tests.daemon.test_server import World, connect, world  # noqa: F401 - the fixture

WRITE_TIMEOUT_S = 2.0


@contextlib.contextmanager
def contended(make: Callable[[], tuple[int, int]]) -> Iterator[tuple[int, threading.Event]]:
    """(write end for the daemon, stop reading): a rival writer keeps the output full while a
    reader takes a little now and then, until ``stop reading`` is set; then nobody reads."""
    read_end, write_end = make()
    rival = os.dup(write_end)
    stop_reading = threading.Event()
    done = threading.Event()

    def rival_writer() -> None:
        with contextlib.suppress(OSError):
            while not done.is_set():
                os.write(rival, b"r" * 65536)

    def slow_reader() -> None:
        while not stop_reading.is_set():
            with contextlib.suppress(OSError):
                os.read(read_end, 16384)
            time.sleep(0.001)

    threads = [threading.Thread(target=rival_writer), threading.Thread(target=slow_reader)]
    for thread in threads:
        thread.start()
    try:
        yield write_end, stop_reading
    finally:
        stop_reading.set()
        done.set()
        os.close(read_end)  # EPIPE for every writer still blocked, ours and the rival
        for thread in threads:
            thread.join(10)
        os.close(rival)
        with contextlib.suppress(OSError):
            os.close(write_end)


def _pipe() -> tuple[int, int]:
    return os.pipe()


def _socketpair() -> tuple[int, int]:
    a, b = socket.socketpair()
    return a.detach(), b.detach()


PARALLEL = 4  # restores contended at once: any one stuck in a blocking write fails the test


@pytest.mark.parametrize("make", [_pipe, _socketpair], ids=["pipe", "socket"])
def test_a_contended_output_ends_the_restore_within_the_write_timeout(
    world: World,  # noqa: F811 - the fixture
    make: Callable[[], tuple[int, int]],
) -> None:
    world.add_round("1", 30, elements=2_000_000)  # 8 MB: minutes at this pace
    world.serve(ServerLimits(write_timeout_s=WRITE_TIMEOUT_S, stop_timeout_s=1))
    leases = world.state().leases
    with contextlib.ExitStack() as stack:
        outputs = [stack.enter_context(contended(make)) for _ in range(PARALLEL)]
        socks = [stack.enter_context(connect(world.socket)) for _ in range(PARALLEL)]
        line = b'{"cmd": "restore", "client": "1", "round": 30, "transfer": "fd"}\n'
        for sock, (write_end, _) in zip(socks, outputs, strict=True):
            socket.send_fds(sock, [line], [write_end])
        time.sleep(0.5)  # the daemon and the rivals contend for the room the readers make
        assert leases.any_held("1"), "the restores should still be running"
        for _, stop_reading in outputs:
            stop_reading.set()
        stopped = time.monotonic()
        while leases.any_held("1") and time.monotonic() - stopped < WRITE_TIMEOUT_S + 4:
            time.sleep(0.02)
        released_s = time.monotonic() - stopped
        for sock in socks:
            sock.settimeout(5)
            assert sock.recv(100) == b""  # no answer: the output was not read, the request ended
    assert released_s < WRITE_TIMEOUT_S + 2, f"a restore held its lease {released_s:.1f} s"


def test_a_terminal_is_refused(world: World) -> None:  # noqa: F811 - the fixture
    """A terminal's write blocks once its buffer is nearly full, whatever poll said before."""
    world.serve()
    controller, terminal = os.openpty()
    try:
        with connect(world.socket) as sock:
            line = b'{"cmd": "restore", "client": "1", "round": 1, "transfer": "fd"}\n'
            socket.send_fds(sock, [line], [terminal])
            answer = json.loads(sock.makefile("rb").readline())
    finally:
        os.close(controller)
        os.close(terminal)
    assert answer["ok"] is False and answer["error"]["code"] == "bad_request", answer
    assert "terminal" in answer["error"]["message"]
    assert not world.state().leases.any_held("1")
