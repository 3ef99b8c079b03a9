"""How a handler answers on its connection: the Connection protocol, fd output, frame streams.

Split from ``handlers.py`` (which only does each command's work): restore and export write
checkpoint bytes either into the descriptor the client passed (``"transfer": "fd"``) or as
frames on the connection (``"transfer": "frames"``). Either way no write blocks longer than the
connection's write timeout, and a client that goes away ends the request at the next write
(:class:`PeerGoneError`): it costs the daemon nothing more.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import select
import socket
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from chunkd.errors import RequestError
from chunkd.protocol import MAX_FRAME_BYTES, TRANSFER_FD, Request
from chunkd.restore import Write

if TYPE_CHECKING:
    from chunkd.daemon.access import Access

#: Largest single write into a pipe or socket: at most this much fits once poll says "writable"
#: (PIPE_BUF), so a write never blocks behind a reader that stopped reading.
_NONBLOCKING_WRITE_BYTES: Final = select.PIPE_BUF


class PeerGoneError(Exception):
    """The client, or the reader of its output, went away or stalled; nothing more can be sent.

    Not a ChunkdError: there is nobody left to answer. The server closes the connection and logs
    the request as rejected; the work simply ends.
    """


class Streamed:
    """What a handler returns after it has answered on the connection itself (a frame stream)."""

    __slots__ = ()


STREAMED: Final = Streamed()

Result = dict[str, object] | Streamed


class Connection(Protocol):
    """What a handler may do with the requesting connection (implemented by ``server.py``)."""

    @property
    def write_timeout_s(self) -> float:
        """The longest any single write to the client (socket or passed fd) may take."""
        ...

    @property
    def access(self) -> Access:
        """What the peer may do: admin, or read the clients whose directory it owns."""
        ...

    def take_fd(self) -> int | None:
        """The descriptor sent with the request (SCM_RIGHTS), now owned by the caller."""
        ...

    def peer_gone(self) -> bool:
        """True once the client has hung up; checked between writes."""
        ...

    def begin_stream(self, header: Mapping[str, object]) -> None:
        """Send the ``{"ok": true, "result": header}`` line that precedes the frames."""
        ...

    def send_frame(self, payload: bytes | memoryview) -> None:
        """Send payload bytes as one or more frames; PeerGoneError if the client went away."""
        ...

    def end_stream(self, digest: bytes) -> None:
        """Send the end frame and the SHA-256 trailer."""
        ...


class _FdOutput:
    """Writes into a descriptor the client passed, never blocking past the write timeout.

    A regular file takes every write at once. A pipe or socket may have a reader that stopped
    reading; there each write waits for ``poll`` and then writes at most PIPE_BUF bytes. "Writable"
    is not enough, though: the client holds the same pipe or socket and can fill the room that
    woke us before our write lands (a writer of its own, blocked on it), and a blocking write
    then waits with no timeout at all, holding the request's slot and lease for good (issue 19).
    So the write itself never blocks: into a socket with ``MSG_DONTWAIT``, into a pipe by
    ``splice(SPLICE_F_NONBLOCK)`` from a private pipe of ours; a refused write waits for ``poll``
    again, within the same deadline. A terminal is refused (its writes block whatever poll
    said; the CLI refuses one too). The descriptor's flags are left alone: they are shared with
    the client's own copy, so ``O_NONBLOCK`` is never set on it.
    """

    def __init__(self, fd: int, conn: Connection, *, hashing: bool = True) -> None:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise RequestError("the file descriptor passed with the request is not writable")
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise RequestError("the file descriptor passed with the request is a directory")
        if os.isatty(fd):
            raise RequestError(
                "the file descriptor passed with the request is a terminal; pass a file, a pipe "
                "or a socket"
            )
        self._fd = fd
        self._conn = conn
        self._may_block = not stat.S_ISREG(mode)
        self._sock = socket.socket(fileno=os.dup(fd)) if stat.S_ISSOCK(mode) else None
        #: a pipe's private staging pipe (read end, write end) and how many bytes it holds:
        #: always the first bytes of the piece being written
        self._stage = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC) if stat.S_ISFIFO(mode) else None
        self._staged = 0
        self._hash = hashlib.sha256() if hashing else None
        self.bytes_written = 0

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest() if self._hash is not None else ""

    def close(self) -> None:
        """Close what this output opened of its own (never the client's descriptor)."""
        if self._sock is not None:
            self._sock.close()
        for end in self._stage or ():
            os.close(end)
        self._sock = self._stage = None

    def write(self, data: bytes | memoryview) -> None:
        if self._conn.peer_gone():
            raise PeerGoneError("the client hung up")
        view = memoryview(data).cast("B")
        for start in range(0, len(view), MAX_FRAME_BYTES):
            # Each MiB gets the whole write timeout, as a frame does on the socket: a client
            # slower than that is treated as gone, however large the chunks are.
            self._write_piece(view[start : start + MAX_FRAME_BYTES])

    def _write_piece(self, piece: memoryview) -> None:
        deadline = time.monotonic() + self._conn.write_timeout_s
        while piece:
            some = piece
            if self._may_block:
                self._wait_writable(deadline)
                some = piece[:_NONBLOCKING_WRITE_BYTES]
            try:
                n = self._write_nowait(some)
            except BlockingIOError:
                continue  # someone else took the room: wait for more, within the deadline
            except OSError as e:
                if e.errno in (errno.EPIPE, errno.ECONNRESET):
                    raise PeerGoneError("the output's reader went away") from None
                raise RequestError(
                    f"cannot write the output after {self.bytes_written} bytes: {e.strerror}"
                ) from None
            if self._hash is not None:
                self._hash.update(piece[:n])
            self.bytes_written += n
            piece = piece[n:]

    def _write_nowait(self, some: memoryview) -> int:
        """Write what fits now; BlockingIOError if nothing does (a pipe or socket)."""
        if self._sock is not None:
            return self._sock.send(some, socket.MSG_DONTWAIT)
        if self._stage is not None:
            stage_read, stage_write = self._stage
            if not self._staged:  # our own empty pipe takes PIPE_BUF bytes whole
                self._staged = os.write(stage_write, some)
            n = os.splice(stage_read, self._fd, self._staged, flags=os.SPLICE_F_NONBLOCK)
            self._staged -= n
            return n
        return os.write(self._fd, some)  # a file; or a device, which poll has to do for

    def _wait_writable(self, deadline: float) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLOUT)
        remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
        if not poller.poll(remaining_ms):
            raise PeerGoneError(f"the output was not read for {self._conn.write_timeout_s:.0f} s")


@dataclass(frozen=True, slots=True)
class _Sent:
    """What went out: the fd answer is ``header`` plus these two, the frame trailer the digest."""

    bytes_sent: int
    sha256: str


def send_output(
    conn: Connection,
    request: Request,
    header: dict[str, object],
    produce: Callable[[Write, bool], object],
    *,
    produce_digest: Callable[[object], str] | None = None,
) -> _Sent:
    """Run ``produce(write, into_file)`` into the passed fd, or as frames after ``header``.

    ``into_file`` is true when the passed fd is a regular file: the CLI renames it into place
    only after checking the whole file's SHA-256, so nothing wrong can be seen before the end
    (a restore then hashes each byte once; see docs/DESIGN.md "Digests"). Frames and pipes
    deliver bytes as they come, so the producer checks each piece before it writes it.

    With frames the whole answer has been sent when this returns; with an fd the caller answers.
    ``produce_digest`` takes the SHA-256 from what ``produce`` returned (a restore has already
    hashed exactly the bytes it wrote, and checked them); without it the output is hashed here.
    """
    if request.transfer == TRANSFER_FD:
        fd = conn.take_fd()
        if fd is None:
            raise RequestError(
                '"transfer": "fd" needs a file descriptor sent with the request (SCM_RIGHTS)'
            )
        out: _FdOutput | None = None
        try:
            out = _FdOutput(fd, conn, hashing=produce_digest is None)
            produced = produce(out.write, stat.S_ISREG(os.fstat(fd).st_mode))
        finally:
            if out is not None:
                out.close()
            os.close(fd)
        digest_hex = produce_digest(produced) if produce_digest else out.sha256
        return _Sent(out.bytes_written, digest_hex)
    digest = hashlib.sha256()
    sent = 0

    def write_frames(data: bytes | memoryview) -> None:
        nonlocal sent
        if produce_digest is None:
            digest.update(data)
        conn.send_frame(data)
        sent += len(data)

    conn.begin_stream(header)
    produced = produce(write_frames, False)
    digest_hex = produce_digest(produced) if produce_digest else digest.hexdigest()
    conn.end_stream(bytes.fromhex(digest_hex))
    return _Sent(sent, digest_hex)


def answer_for(request: Request, header: dict[str, object], sent: _Sent) -> Result:
    if request.transfer != TRANSFER_FD:
        return STREAMED
    return {**header, "bytes": sent.bytes_sent, "sha256": sent.sha256}
