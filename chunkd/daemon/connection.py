"""One client connection: its credentials, its unparsed input, and one request's channel.

A :class:`ClientConnection` belongs to the server's reactor thread while it waits for a request
line and to exactly one worker thread while that request is served, so it needs no lock. The
worker talks to it through a :class:`RequestChannel`, which implements what
:class:`chunkd.daemon.handlers.Connection` promises handlers and also sends the answers, including
an error in the middle of a frame stream (the ``FRAME_ERROR`` length, then the error line).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from chunkd.daemon.admission import Holder
from chunkd.daemon.output import PeerGoneError
from chunkd.protocol import (
    FRAME_END,
    FRAME_ERROR,
    MAX_FRAME_BYTES,
    MAX_LINE_BYTES,
    encode_error,
    encode_frame_header,
    encode_ok,
)

if TYPE_CHECKING:
    from chunkd.daemon.access import Access

_PEERCRED: Final = struct.Struct("3i")  # struct ucred: pid, uid, gid
#: SO_PEERGROUPS (Linux 4.13+; not every Python names it): the peer's supplementary groups.
_SO_PEERGROUPS: Final = getattr(socket, "SO_PEERGROUPS", 59)
_GID: Final = struct.Struct("I")
#: NGROUPS_MAX on Linux: a process has at most this many supplementary groups.
_MAX_GROUPS: Final = 65536
#: Bytes asked of one recvmsg; a whole request line (64 KiB) fits in one.
_RECV_BYTES: Final = 65536
#: Descriptors taken from one recvmsg; the kernel closes any beyond (MSG_CTRUNC).
_FDS_PER_RECV: Final = 4
_INT: Final = struct.Struct("i")


@dataclass(frozen=True, slots=True)
class Peer:
    """The connecting process, as the kernel saw it at connect() (SO_PEERCRED, SO_PEERGROUPS).

    ``groups`` holds the primary gid and the supplementary groups the peer ran with when it
    connected, taken from the connection, never looked up by name (NSS) afterwards.
    """

    pid: int
    uid: int
    gid: int
    groups: frozenset[int] = frozenset()

    @classmethod
    def of(cls, sock: socket.socket) -> Peer:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        pid, uid, gid = _PEERCRED.unpack(raw)
        return cls(pid, uid, gid, frozenset({gid, *_peer_groups(sock)}))

    def log_context(self) -> dict[str, int]:
        return {"peer_uid": self.uid, "peer_gid": self.gid, "peer_pid": self.pid}


def _peer_groups(sock: socket.socket) -> tuple[int, ...]:
    """The peer's supplementary groups; none if the kernel cannot say (then only ``gid``)."""
    size = 64 * _GID.size
    while True:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, size)
        except OSError as e:
            # ERANGE: more groups than the buffer holds (the kernel does not say how many in
            # Python's API); grow and ask again. Anything else: the option is unsupported.
            if e.errno == errno.ERANGE and size < _MAX_GROUPS * _GID.size:
                size *= 8
                continue
            return ()
        count = len(raw) // _GID.size
        return struct.unpack(f"{count}I", raw[: count * _GID.size])


class ClientConnection:
    """A client connection: its socket, credentials, unparsed input and waiting descriptors."""

    __slots__ = ("buf", "closing", "deadline", "fds", "holder", "peer", "sock")

    def __init__(self, sock: socket.socket, peer: Peer, admin: bool, deadline: float) -> None:
        self.sock = sock
        self.peer = peer
        #: whose connection and request slots it takes (:mod:`chunkd.daemon.admission`)
        self.holder = Holder(peer.uid, peer.pid, admin)
        self.buf = bytearray()
        #: (offset in ``buf`` of the byte they came with, descriptors): they belong to its line
        self.fds: list[tuple[int, list[int]]] = []
        self.deadline = deadline
        self.closing = False  # answered a fatal error; draining input until EOF or the deadline

    def receive(self) -> bytes:
        """Append what the socket holds to ``buf``; ``b""`` at end of input.

        Descriptors that arrive (SCM_RIGHTS) are queued with the offset of the first byte they
        came with, so they go to that byte's request line however the stream was split.
        Raises BlockingIOError when there is nothing to read, OSError when the socket failed.
        """
        data, ancillary, _, _ = self.sock.recvmsg(
            _RECV_BYTES, socket.CMSG_SPACE(_FDS_PER_RECV * _INT.size), socket.MSG_CMSG_CLOEXEC
        )
        fds = _fds_from(ancillary)
        if fds:
            self.fds.append((len(self.buf), fds))
        self.buf += data
        return data

    def discard_input(self) -> None:
        """Forget unparsed input and close waiting descriptors (the connection is closing)."""
        self.buf.clear()
        close_fds(fd for _, group in self.fds for fd in group)
        self.fds = []

    def pending_fd_count(self) -> int:
        return sum(len(group) for _, group in self.fds)

    def take_line(self) -> tuple[bytes, list[int]] | None:
        """The next complete line (without newline) and the descriptors sent with it."""
        end = self.buf.find(b"\n", 0, MAX_LINE_BYTES + 1)
        if end < 0:
            return None
        line = bytes(self.buf[:end])
        del self.buf[: end + 1]
        mine = [fd for offset, group in self.fds if offset <= end for fd in group]
        self.fds = [(offset - end - 1, group) for offset, group in self.fds if offset > end]
        return line, mine

    def close(self) -> None:
        self.discard_input()
        self.sock.close()


def close_fds(fds: Iterable[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _fds_from(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            count = len(data) // _INT.size
            fds.extend(struct.unpack(f"{count}i", data[: count * _INT.size]))
    return fds


def send_nowait(sock: socket.socket, data: bytes) -> bool:
    """Send a short answer from the reactor without blocking; False unless all of it went."""
    try:
        return sock.send(data) == len(data)
    except OSError:
        return False


class RequestChannel:
    """One request's view of its connection: what handlers.Connection promises, and answers."""

    def __init__(
        self, sock: socket.socket, fds: list[int], write_timeout_s: float, access: Access
    ) -> None:
        self._sock = sock
        self._fds = fds
        self.write_timeout_s = write_timeout_s
        #: what the peer may do (decided from its credentials when the request started)
        self.access = access
        self.streaming = False  # a frame stream has begun: errors must go out as an error frame

    @property
    def fd_count(self) -> int:
        return len(self._fds)

    def take_fd(self) -> int | None:
        return self._fds.pop(0) if self._fds else None

    def close_fds(self) -> None:
        close_fds(self._fds)
        self._fds = []

    def peer_gone(self) -> bool:
        """True once the client closed its socket (POLLHUP), not when it only half-closed.

        A client may ``shutdown(SHUT_WR)`` after its request (``socat`` does, at the end of its
        input) and still wait for the answer; only a full close means nobody will read it.
        """
        poller = select.poll()
        poller.register(self._sock, 0)  # POLLHUP and POLLERR are reported whatever the mask
        return any(event & (select.POLLHUP | select.POLLERR) for _, event in poller.poll(0))

    def send(self, data: bytes | memoryview) -> None:
        try:
            self._sock.sendall(data)
        except TimeoutError:
            raise PeerGoneError(
                f"the client did not read for {self.write_timeout_s:.0f} s"
            ) from None
        except OSError as e:
            raise PeerGoneError(
                f"the client went away ({errno.errorcode.get(e.errno or 0)})"
            ) from None

    def begin_stream(self, header: Mapping[str, object]) -> None:
        self.send(encode_ok(header))
        self.streaming = True

    def send_frame(self, payload: bytes | memoryview) -> None:
        view = memoryview(payload).cast("B")
        for start in range(0, len(view), MAX_FRAME_BYTES):
            piece = view[start : start + MAX_FRAME_BYTES]
            self.send(encode_frame_header(len(piece)))
            self.send(piece)

    def end_stream(self, digest: bytes) -> None:
        self.send(encode_frame_header(FRAME_END) + digest)
        self.streaming = False

    def send_error(self, exc: BaseException) -> None:
        prefix = encode_frame_header(FRAME_ERROR) if self.streaming else b""
        self.streaming = False
        self.send(prefix + encode_error(exc))
