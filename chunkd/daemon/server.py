"""The control socket: safe bind, a reactor for idle connections, bounded request threads.

Shape. One reactor thread owns the listener and every *idle* connection (waiting for its next
request line) in a ``selectors`` loop; an idle connection costs a file descriptor and at most one
line of buffer, never a thread. When a complete line arrives, the connection is handed to a worker
thread from a bounded pool for exactly that request, then handed back. So a hundred silent or
trickling clients cannot starve a ``ping``, and a request never waits behind another client's
line.

Fair slots (:mod:`chunkd.daemon.admission`, the bounds in ``ServerLimits``). Connections and
requests being served are shared alike: one uid holds at most ``max_connections_per_uid``
connections and ``max_active_requests_per_uid`` requests, however many processes it runs; the
last ``admin_reserved_connections`` / ``admin_reserved_requests`` are kept for admins, so no
tenant (nor every tenant together) can lock root out of its own daemon; and one admin process
holds at most ``max_connections_per_admin_process`` / ``max_active_requests_per_admin_process``
(admins share uids). Past its share a new connection is answered ``busy`` and closed, a request
is answered ``busy`` and its connection stays open; both are logged ``request.rejected``.

Timeouts. A connection must complete a request line within ``idle_timeout_s`` of becoming idle
(this also ends slow-loris trickles); any single write to a client, on the socket or into a
passed descriptor, must finish within ``write_timeout_s``: a restore whose reader stops reading
ends then and gives back its request slot and its round's lease, whoever asked. A line over 64
KiB gets ``bad_request`` and the connection is closed after its input is drained for a moment,
so the client reads the answer instead of a reset.

Who may do what: :mod:`chunkd.daemon.access` (admins anything; a client directory's owner may
read that client; nobody else anything but ``ping``/``status``). Every request runs with the
peer's SO_PEERCRED ``peer_uid``/``peer_gid``/``peer_pid`` bound into its log context; commands
that change databases are refused here, reads of a client the peer may not read in the handler.

The socket file itself (safe bind, stale and live sockets) is :mod:`chunkd.daemon.socketfile`;
one connection and one request's channel are :mod:`chunkd.daemon.connection`; serving one
request line (parse, check, dispatch, answer, log) is :mod:`chunkd.daemon.answer`.

Ownership: ``_idle`` and the selector belong to the reactor thread; a connection belongs to the
reactor while idle and to one worker while busy; ``_lock`` guards only the hand-over state
(``_requests``, ``_returned``, ``_busy``, ``_reactor_done``, ``_futures``).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Final

import structlog

from chunkd import log
from chunkd.daemon import handlers
from chunkd.daemon.access import Access
from chunkd.daemon.admission import ServerLimits, Slots, Tally, refusal
from chunkd.daemon.answer import Dispatch, answer
from chunkd.daemon.connection import (
    ClientConnection,
    Peer,
    RequestChannel,
    close_fds,
    send_nowait,
)
from chunkd.daemon.socketfile import SOCKET_MODE, SocketFile
from chunkd.daemon.state import DaemonState
from chunkd.errors import BusyError, ChunkdError, RequestError
from chunkd.protocol import MAX_LINE_BYTES, encode_error

_LISTENER: Final = "listener"
_WAKE: Final = "wake"

_log = log.get_logger(__name__)


# -- the server ----------------------------------------------------------------------------------


class Server:
    """The daemon's socket server; ``start()`` binds and serves, ``stop()`` ends it cleanly."""

    def __init__(
        self,
        state: DaemonState,
        *,
        dispatch: Dispatch = handlers.handle,
        limits: ServerLimits | None = None,
        path: Path | None = None,
    ) -> None:
        self._state = state
        self._dispatch = dispatch
        self.limits = limits or ServerLimits()
        self.path = path or state.settings.socket
        self._socket_file: SocketFile | None = None
        self._selector = selectors.DefaultSelector()
        #: reactor thread only: fileno -> idle connection
        self._idle: dict[int, ClientConnection] = {}
        self._wake_r = self._wake_w = -1
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._connection_quota = self.limits.connection_quota()
        self._requests = Slots(self.limits.request_quota())
        self._returned: list[ClientConnection] = []
        self._busy: set[ClientConnection] = set()
        self._futures: set[Future[None]] = set()
        self._reactor_done = False
        self._workers: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Bind the socket (BusyError if another daemon serves it) and start serving."""
        group = self._state.settings.socket_group
        self._socket_file = SocketFile.bind(self.path, group)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._workers = ThreadPoolExecutor(
            max_workers=self.limits.max_active_requests, thread_name_prefix="chunkd-request"
        )
        self._selector.register(self._socket_file.listener, selectors.EVENT_READ, _LISTENER)
        self._selector.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        self._thread = threading.Thread(target=self._run, name="chunkd-server", daemon=True)
        self._thread.start()
        _log.info(log.SOCKET_BOUND, path=self.path, mode=oct(SOCKET_MODE), group=group or None)

    def stop(self) -> None:
        """Stop accepting, close idle connections, let requests in flight finish, clean up.

        Requests still running after ``stop_timeout_s`` have their connections shut down, which
        ends them at their next write. The socket file is removed if it is still ours.
        """
        if self._thread is None:
            return
        self._stopping.set()
        self._wake()
        self._thread.join()
        with self._lock:
            pending = set(self._futures)
        _, late = wait(pending, timeout=self.limits.stop_timeout_s)
        if late:
            with self._lock:
                for conn in self._busy:
                    with contextlib.suppress(OSError):
                        conn.sock.shutdown(socket.SHUT_RDWR)
            wait(late, timeout=self.limits.write_timeout_s)
        assert self._workers is not None
        self._workers.shutdown(wait=False, cancel_futures=True)
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._thread = None

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")

    # -- the reactor thread ----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                for key, _ in self._selector.select(self._next_timeout()):
                    if key.data is _LISTENER:
                        self._accept()
                    elif key.data is _WAKE:
                        with contextlib.suppress(BlockingIOError):
                            os.read(self._wake_r, 4096)
                    else:
                        self._on_readable(key.data)
                self._take_returned()
                self._expire(time.monotonic())
        finally:
            self._shut_reactor()

    def _shut_reactor(self) -> None:
        assert self._socket_file is not None
        self._selector.close()
        self._socket_file.close()  # new clients now get "no daemon" at once
        for conn in self._idle.values():
            conn.close()
        self._idle.clear()
        with self._lock:
            self._reactor_done = True
            returned, self._returned = self._returned, []
        for conn in returned:
            conn.close()

    def _next_timeout(self) -> float | None:
        if not self._idle:
            return None
        soonest = min(conn.deadline for conn in self._idle.values())
        return max(0.0, soonest - time.monotonic())

    def _accept(self) -> None:
        assert self._socket_file is not None
        while True:
            try:
                sock, _ = self._socket_file.listener.accept()
            except BlockingIOError:
                return
            except OSError as e:  # EMFILE and friends: refuse this round, keep the loop alive
                _log.warning(log.REQUEST_REJECTED, error_code="busy", error=str(e))
                time.sleep(0.05)
                return
            sock.setblocking(False)
            peer = Peer.of(sock)
            admin = self._access(peer).admin
            conn = ClientConnection(
                sock, peer, admin, time.monotonic() + self.limits.idle_timeout_s
            )
            if (why := self._over_limit(conn)) is not None:
                self._refuse(conn, BusyError(why))
                continue
            self._register(conn)

    def _over_limit(self, conn: ClientConnection) -> str | None:
        """Why a new connection is refused, or None (reactor thread)."""
        with self._lock:  # busy, or served and on its way back to the reactor: still open
            busy = [*self._busy, *self._returned]
        held = Tally(c.holder for c in (*self._idle.values(), *busy))
        return refusal(self._connection_quota, conn.holder, held)

    def _access(self, peer: Peer) -> Access:
        settings = self._state.settings
        return Access.decide(peer, settings.allowed_uids, settings.allowed_gids)

    def _register(self, conn: ClientConnection) -> None:
        self._idle[conn.sock.fileno()] = conn
        self._selector.register(conn.sock, selectors.EVENT_READ, conn)

    def _unregister(self, conn: ClientConnection) -> None:
        self._selector.unregister(conn.sock)
        del self._idle[conn.sock.fileno()]

    def _drop(self, conn: ClientConnection) -> None:
        self._unregister(conn)
        conn.close()

    def _refuse(self, conn: ClientConnection, exc: ChunkdError) -> None:
        """Answer an error from the reactor and close (a never-registered connection too)."""
        with structlog.contextvars.bound_contextvars(**conn.peer.log_context()):
            _log.warning(log.REQUEST_REJECTED, error_code=exc.code, error=str(exc))
        send_nowait(conn.sock, encode_error(exc))
        conn.close()

    def _linger(self, conn: ClientConnection, exc: ChunkdError) -> None:
        """Answer a fatal error, then drain input until EOF or ``linger_s``, then close."""
        with structlog.contextvars.bound_contextvars(**conn.peer.log_context()):
            _log.warning(log.REQUEST_REJECTED, error_code=exc.code, error=str(exc))
        sent = send_nowait(conn.sock, encode_error(exc))
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_WR)
        if not sent:
            self._drop(conn)
            return
        conn.closing = True
        conn.discard_input()
        conn.deadline = time.monotonic() + self.limits.linger_s

    def _on_readable(self, conn: ClientConnection) -> None:
        try:
            data = conn.receive()
        except BlockingIOError:
            return
        except OSError:
            self._drop(conn)
            return
        if conn.closing:
            conn.discard_input()
            if not data:
                self._drop(conn)
            return
        if not data:
            if conn.buf:
                with structlog.contextvars.bound_contextvars(**conn.peer.log_context()):
                    _log.info(
                        log.REQUEST_REJECTED,
                        error_code="disconnected",
                        error="the client hung up in the middle of a request line",
                    )
            self._drop(conn)
            return
        if conn.pending_fd_count() > self.limits.max_pending_fds:
            self._linger(conn, RequestError("too many file descriptors sent with one request"))
            return
        self._start_lines(conn)

    def _start_lines(self, conn: ClientConnection) -> None:
        """Start the next complete request of an idle connection, if it has one."""
        while (taken := conn.take_line()) is not None:
            line, fds = taken
            with self._lock:
                why = self._requests.take(conn.holder)
            if why is None:
                self._unregister(conn)
                self._start_worker(conn, line, fds)
                return
            close_fds(fds)
            busy = BusyError(why)
            with structlog.contextvars.bound_contextvars(**conn.peer.log_context()):
                _log.warning(log.REQUEST_REJECTED, error_code=busy.code, error=str(busy))
            if not send_nowait(conn.sock, encode_error(busy)):
                self._drop(conn)
                return
        if len(conn.buf) > MAX_LINE_BYTES:
            self._linger(conn, RequestError(f"request line is longer than {MAX_LINE_BYTES} bytes"))

    def _start_worker(self, conn: ClientConnection, line: bytes, fds: list[int]) -> None:
        assert self._workers is not None
        with self._lock:
            self._busy.add(conn)
            future = self._workers.submit(self._serve, conn, line, fds)
            self._futures.add(future)
        future.add_done_callback(self._forget)

    def _forget(self, future: Future[None]) -> None:
        with self._lock:
            self._futures.discard(future)

    def _take_returned(self) -> None:
        with self._lock:
            returned, self._returned = self._returned, []
        for conn in returned:
            conn.deadline = time.monotonic() + self.limits.idle_timeout_s
            self._register(conn)
            self._start_lines(conn)  # a pipelined request may already be buffered

    def _expire(self, now: float) -> None:
        for conn in [c for c in self._idle.values() if c.deadline <= now]:
            if conn.buf and not conn.closing:
                self._unregister(conn)
                timeout_s = self.limits.idle_timeout_s
                self._refuse(conn, RequestError(f"no complete request line within {timeout_s} s"))
            else:
                self._drop(conn)

    # -- worker threads: one request each --------------------------------------------------------
    def _serve(self, conn: ClientConnection, line: bytes, fds: list[int]) -> None:
        channel = RequestChannel(
            conn.sock, fds, self.limits.write_timeout_s, self._access(conn.peer)
        )
        keep_open = False
        try:
            conn.sock.settimeout(self.limits.write_timeout_s)
            with structlog.contextvars.bound_contextvars(**conn.peer.log_context()):
                keep_open = answer(self._dispatch, self._state, channel, line)
        finally:
            channel.close_fds()
            self._hand_back(conn, keep_open)

    def _hand_back(self, conn: ClientConnection, keep_open: bool) -> None:
        with self._lock:
            self._requests.give_back(conn.holder)
            self._busy.discard(conn)
            keep_open = keep_open and not self._reactor_done
            if keep_open:
                conn.sock.setblocking(False)
                self._returned.append(conn)
        if keep_open:
            self._wake()
        else:
            conn.close()
