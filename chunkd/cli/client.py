"""The CLI's side of the control socket: a request, its one answer, fd passing, frames.

An error answer becomes the ChunkdError class its code names (:data:`chunkd.errors.CLASS_BY_CODE`),
so ``cli/main.py`` maps it to an exit status like any local error. Nothing answering at the socket
is :class:`~chunkd.errors.DaemonUnavailableError` (exit 8), whose message names the socket tried,
``--socket``/``--config`` and the command's offline ``--db`` form, if it has one.

Waiting for a long answer (a restore into a passed fd, a verify) wakes up every
:data:`POLL_S` to call ``on_wait``, which is how a progress bar advances without a thread.
"""

from __future__ import annotations

import errno
import hashlib
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from chunkd.errors import (
    CLASS_BY_CODE,
    ChunkdError,
    DaemonUnavailableError,
    ForbiddenError,
    IntegrityError,
)
from chunkd.protocol import (
    FRAME_END,
    FRAME_ERROR,
    FRAME_HEADER,
    TRAILER_BYTES,
    TRANSFER_FD,
    TRANSFER_FRAMES,
    Answer,
    decode_frame_header,
    encode_request,
    parse_answer,
)

#: How long to wait for the daemon to accept a connection.
CONNECT_TIMEOUT_S: Final = 5.0
#: How often a waiting call wakes up to run ``on_wait``.
POLL_S: Final = 0.2
#: An answer line longer than this is not an answer (a list of many rounds is far below it).
MAX_ANSWER_BYTES: Final = 256 << 20
_RECV_BYTES: Final = 1 << 20

#: The "no daemon answers" hint of a command that has a ``--db`` form (issue 21: ``list`` and
#: ``status`` used to suggest ``restore --db``).
OFFLINE_FORMS: Final = "--db PATH works on a database without the daemon"

OnWait = Callable[[], None]
Sink = Callable[[memoryview], None]


def error_for(answer: Answer) -> ChunkdError:
    """The exception an error answer stands for."""
    cls = CLASS_BY_CODE.get(answer.code)
    if cls is None:
        return ChunkdError(f"{answer.message} ({answer.code})")
    return cls(answer.message)


@dataclass(frozen=True, slots=True)
class StreamResult:
    """A received frame stream: its header and what was verified against the trailer."""

    header: dict[str, object]
    bytes_received: int
    sha256: str


class DaemonClient:
    """One connection to the daemon; requests are sent and answered one at a time."""

    def __init__(self, sock: socket.socket, path: Path) -> None:
        self._sock = sock
        self.path = path
        self._buf = bytearray()

    @classmethod
    def connect(cls, path: Path, *, offline: str | None = OFFLINE_FORMS) -> DaemonClient:
        """A connection to the daemon at ``path``; DaemonUnavailableError naming ``path``, how
        to pick another daemon, and ``offline`` (what the command can do without one), if any.
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            sock.connect(str(path))
        except PermissionError:
            sock.close()
            raise ForbiddenError(
                f"permission denied on {path}: this user needs to be in the socket's group"
            ) from None
        except OSError as e:
            sock.close()
            detail = "" if e.errno in (errno.ENOENT, errno.ECONNREFUSED) else f" ({e.strerror})"
            hint = f"; {offline}" if offline else ""
            raise DaemonUnavailableError(
                f"no chunkd daemon answers at {path}{detail}: is it running? --socket PATH or "
                f"--config FILE picks another daemon{hint}"
            ) from None
        sock.settimeout(None)
        return cls(sock, path)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> DaemonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests --------------------------------------------------------------------------------
    def call(
        self, cmd: str, *, fd: int | None = None, on_wait: OnWait | None = None, **fields: object
    ) -> dict[str, object]:
        """Send one request (with ``fd`` attached, if given); its result, or raise its error."""
        self._send(encode_request(cmd, **fields), fd)
        answer = parse_answer(self._read_line(on_wait))
        if not answer.ok:
            raise error_for(answer)
        return answer.result

    def restore_to_fd(
        self, cmd: str, fd: int, *, on_wait: OnWait | None = None, **fields: object
    ) -> dict[str, object]:
        """``restore``/``export`` with ``"transfer": "fd"``: the daemon writes into ``fd``."""
        return self.call(cmd, fd=fd, on_wait=on_wait, transfer=TRANSFER_FD, **fields)

    def restore_frames(
        self,
        cmd: str,
        sink: Sink,
        *,
        on_header: Callable[[dict[str, object]], None] | None = None,
        **fields: object,
    ) -> StreamResult:
        """``restore``/``export`` as frames: each payload goes to ``sink``, the trailer is checked.

        Memory stays at one frame. IntegrityError if the trailer does not match what arrived.
        """
        header = self.call(cmd, transfer=TRANSFER_FRAMES, **fields)
        if on_header is not None:
            on_header(header)
        digest = hashlib.sha256()
        received = 0
        while True:
            length = decode_frame_header(self._read_exact(FRAME_HEADER.size))
            if length == FRAME_END:
                break
            if length == FRAME_ERROR:
                raise self._stream_error()
            payload = self._read_exact(length)
            digest.update(payload)
            sink(payload)
            received += length
        trailer = bytes(self._read_exact(TRAILER_BYTES))
        if trailer != digest.digest():
            raise IntegrityError(
                f"the stream from the daemon ends with SHA-256 {trailer.hex()[:16]}…, but the "
                f"{received} bytes received hash to {digest.hexdigest()[:16]}…"
            )
        return StreamResult(header, received, digest.hexdigest())

    def _stream_error(self) -> ChunkdError:
        """The error line after a FRAME_ERROR length, as the exception it stands for."""
        answer = parse_answer(self._read_line(None))
        if answer.ok:
            return ChunkdError("the daemon aborted the stream without saying why")
        return error_for(answer)

    # -- the wire --------------------------------------------------------------------------------
    def _send(self, line: bytes, fd: int | None) -> None:
        try:
            if fd is None:
                self._sock.sendall(line)
                return
            # The descriptor rides on the first byte; the rest of the line follows as usual.
            sent = socket.send_fds(self._sock, [line], [fd])
            self._sock.sendall(line[sent:])
        except OSError as e:
            raise self._lost(e) from None

    def _lost(self, e: OSError | None) -> ChunkdError:
        reason = f": {e.strerror}" if e is not None and e.strerror else ""
        return ChunkdError(
            f"the daemon at {self.path} closed the connection without answering{reason} "
            "(its log says why)"
        )

    def _fill(self, on_wait: OnWait | None) -> None:
        """Receive more bytes into the buffer, calling ``on_wait`` while none come."""
        self._sock.settimeout(POLL_S if on_wait is not None else None)
        while True:
            try:
                data = self._sock.recv(_RECV_BYTES)
            except TimeoutError:
                assert on_wait is not None
                on_wait()
                continue
            except OSError as e:
                raise self._lost(e) from None
            if not data:
                raise self._lost(None)
            self._buf += data
            return

    def _read_line(self, on_wait: OnWait | None) -> bytes:
        while (end := self._buf.find(b"\n")) < 0:
            if len(self._buf) > MAX_ANSWER_BYTES:
                raise ChunkdError(f"the daemon sent an answer over {MAX_ANSWER_BYTES} bytes")
            self._fill(on_wait)
        line = bytes(self._buf[:end])
        del self._buf[: end + 1]
        return line

    def _read_exact(self, n: int) -> memoryview:
        while len(self._buf) < n:
            self._fill(None)
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return memoryview(data)


#: How often a waiting command asks ``status`` how far the daemon has got.
FOLLOW_EVERY_S: Final = 0.5


def follow_status(
    socket_path: Path, key: str, on_item: Callable[[dict[str, object]], bool]
) -> OnWait:
    """An ``on_wait`` that, at most every :data:`FOLLOW_EVERY_S`, asks the daemon's ``status``
    on a second connection for its ``key`` list (``ingesting``, ``verifying``) and gives each
    item to ``on_item`` until one returns True. The first wait asks at once, so even a job of
    a second shows its way; a daemon that cannot answer is asked again next time."""
    last = 0.0

    def on_wait() -> None:
        nonlocal last
        now = time.monotonic()
        if now - last < FOLLOW_EVERY_S:
            return
        last = now
        try:
            with DaemonClient.connect(socket_path) as probe:
                under_way = probe.call("status").get(key)
        except ChunkdError:
            return
        for item in under_way if isinstance(under_way, list) else []:
            if isinstance(item, dict) and on_item(item):
                return

    return on_wait
