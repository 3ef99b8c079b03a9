"""One function per socket command: ``(state, request, connection) -> result``. No socket code.

The server (``server.py``) has already validated the request (:func:`chunkd.protocol.
parse_request`) and checked who may send it; a handler only does the work. It sees the daemon
through :class:`~chunkd.daemon.state.DaemonState` and the client through the narrow
:class:`Connection` below, which the server implements. Errors are raised, never answered here:
the server turns them into the one answer a request gets.

Reads (list, verify, restore, export) open their own read-only :class:`ChunkStore` in the
connection's thread and never wait for a lane. Writes (ingest, prune) are handed to the client's
lane, the database's only writer, and waited for with a timeout; past it the answer is ``busy``
while the job itself still runs.

Restore and export write checkpoint bytes either into the descriptor the client passed
(``"transfer": "fd"``) or as frames on the connection (``"transfer": "frames"``). Either way no
write blocks longer than the connection's write timeout, and a client that goes away ends the
request at the next write (:class:`PeerGoneError`): it costs the daemon nothing more.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import os
import select
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

from chunkd import __version__, log, safepath
from chunkd.daemon.state import ClientInfo, DaemonState
from chunkd.errors import BusyError, ChunkdError, ForbiddenError, NotFoundError, RequestError
from chunkd.export import StoredRound, plan_safetensors, stream_safetensors
from chunkd.protocol import MAX_FRAME_BYTES, TRANSFER_FD, Request
from chunkd.restore import Write, restore_round
from chunkd.store import ChunkStore
from chunkd.summary import summarize_ingest, summarize_prune, summarize_store, summarize_verify
from chunkd.verify import verify_store

if TYPE_CHECKING:
    from chunkd.daemon.access import Access

#: How long a request waits for its ingest or prune on the lane before answering ``busy``.
LANE_TIMEOUT_S: Final = 300.0
#: Largest single write into a pipe or socket: at most this much fits once poll says "writable"
#: (PIPE_BUF), so a write never blocks behind a reader that stopped reading.
_NONBLOCKING_WRITE_BYTES: Final = select.PIPE_BUF

_log = log.get_logger(__name__)
_T = TypeVar("_T")


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


Handler = Callable[[DaemonState, Request, Connection], Result]


# -- helpers -------------------------------------------------------------------------------------


def _client(state: DaemonState, client_id: str | None, access: Access) -> ClientInfo:
    """The client asked for, if it exists and the peer may read it (else not_found, forbidden).

    Whether a client exists is no secret (``status`` counts them); its data is.
    """
    assert client_id is not None  # parse_request requires it for every command that calls this
    info = state.clients().get(client_id)
    if info is None:
        raise NotFoundError(f"no client {client_id!r} is watched by this daemon")
    access.check_read(info)
    return info


def _selected_clients(
    state: DaemonState, client_id: str | None, access: Access
) -> list[ClientInfo]:
    """The one client asked for, or every client the peer may read, in id order."""
    if client_id is not None:
        return [_client(state, client_id, access)]
    clients = state.clients()
    return access.readable(clients[key] for key in sorted(clients))


def _has_database(info: ClientInfo) -> bool:
    """Whether the client has a database with a schema yet.

    SQLite creates the file empty when the first writer connects and writes it only when the
    schema commits; ``open_reader`` calls an empty file "schema version 0" (an internal error),
    so a ``list`` during a new client's first ingest would fail for every client. Empty is
    "nothing stored yet".
    """
    try:
        return info.db_path.stat().st_size > 0
    except FileNotFoundError:
        return False


def _open_store(info: ClientInfo) -> ChunkStore:
    if not _has_database(info):
        raise NotFoundError(f"client {info.client_id!r} has no stored rounds yet")
    return ChunkStore.open_reader(info.db_path)


def _open_store_if_any(info: ClientInfo) -> ChunkStore | None:
    """A reader, or None for a client whose first checkpoint has not been ingested yet."""
    return ChunkStore.open_reader(info.db_path) if _has_database(info) else None


def _wait(future: Future[_T], what: str) -> _T:
    try:
        return future.result(timeout=LANE_TIMEOUT_S)
    except FutureTimeoutError:
        raise BusyError(
            f"{what} did not finish within {LANE_TIMEOUT_S:.0f} s; it stays queued (see the log)"
        ) from None


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1e3, 1)


class _FdOutput:
    """Writes into a descriptor the client passed, never blocking past the write timeout.

    A regular file takes every write at once. A pipe or socket may have a reader that stopped
    reading; there each write waits for ``poll`` and then writes at most PIPE_BUF bytes, which a
    writable pipe always accepts whole, so a stalled reader costs one timeout, not a thread.
    The descriptor's flags are left alone: they are shared with the client's own copy.
    """

    def __init__(self, fd: int, conn: Connection, *, hashing: bool = True) -> None:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise RequestError("the file descriptor passed with the request is not writable")
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise RequestError("the file descriptor passed with the request is a directory")
        self._fd = fd
        self._conn = conn
        self._may_block = not stat.S_ISREG(mode)
        self._hash = hashlib.sha256() if hashing else None
        self.bytes_written = 0

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest() if self._hash is not None else ""

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
                n = os.write(self._fd, some)
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


def _send_output(
    conn: Connection,
    request: Request,
    header: dict[str, object],
    produce: Callable[[Write], object],
    *,
    produce_digest: Callable[[object], str] | None = None,
) -> _Sent:
    """Run ``produce(write)`` into the passed fd, or as frames after ``header``.

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
        try:
            out = _FdOutput(fd, conn, hashing=produce_digest is None)
            produced = produce(out.write)
        finally:
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
    produced = produce(write_frames)
    digest_hex = produce_digest(produced) if produce_digest else digest.hexdigest()
    conn.end_stream(bytes.fromhex(digest_hex))
    return _Sent(sent, digest_hex)


def _round_to_serve(store: ChunkStore, request: Request) -> int:
    return request.round_num if request.round_num is not None else store.latest_round()


def _answer(request: Request, header: dict[str, object], sent: _Sent) -> Result:
    if request.transfer != TRANSFER_FD:
        return STREAMED
    return {**header, "bytes": sent.bytes_sent, "sha256": sent.sha256}


# -- the commands --------------------------------------------------------------------------------


def ping(state: DaemonState, request: Request, conn: Connection) -> Result:
    return {"pong": True, "version": __version__, "pid": os.getpid()}


def status(state: DaemonState, request: Request, conn: Connection) -> Result:
    result = dict(state.status())
    damaged = DAMAGED.snapshot()
    if damaged:
        errors = result.get("errors", 0)
        result["errors"] = (errors if isinstance(errors, int) else 0) + len(damaged)
    result["damaged_databases"] = damaged
    return result


class DamagedDatabases:
    """Clients whose database a read request could not open or read, until one succeeds again.

    ``list`` answers for every healthy client and reports a damaged one in place; this table is
    what ``status`` adds to its ``errors`` count, so the damage shows in health checks too.
    Any request thread writes it; the lock guards the dict.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_client: dict[str, str] = {}

    def mark(self, client_id: str, message: str) -> None:
        with self._lock:
            self._by_client[client_id] = message

    def clear(self, client_id: str) -> None:
        with self._lock:
            self._by_client.pop(client_id, None)

    def snapshot(self) -> dict[str, str]:
        with self._lock:
            return dict(self._by_client)


#: The daemon's table (one daemon per process).
DAMAGED: Final = DamagedDatabases()


def _summary_or_error(info: ClientInfo) -> dict[str, object]:
    """One client's ``list`` entry; a database that cannot be read is reported in place.

    The entry then has the figures of an empty client and an ``error`` object (code, message),
    so one damaged file never hides every other client.
    """
    try:
        store = _open_store_if_any(info)
        try:
            entry = summarize_store(info.client_id, store)
        finally:
            if store is not None:
                store.close()
    except (ChunkdError, sqlite3.Error, OSError) as e:
        code = e.code if isinstance(e, ChunkdError) else "internal"
        message = f"database {info.db_path} cannot be read: {type(e).__name__}: {e}"
        DAMAGED.mark(info.client_id, message)
        _log.error(log.REQUEST_FAILED, client=info.client_id, error_code=code, error=message)
        return {
            **summarize_store(info.client_id, None),
            "error": {"code": code, "message": message},
        }
    DAMAGED.clear(info.client_id)
    return entry


def list_clients(state: DaemonState, request: Request, conn: Connection) -> Result:
    infos = _selected_clients(state, request.client_id, conn.access)
    return {"clients": [_summary_or_error(info) for info in infos]}


def verify(state: DaemonState, request: Request, conn: Connection) -> Result:
    entries = []
    for info in _selected_clients(state, request.client_id, conn.access):
        try:
            store = _open_store_if_any(info)
            if store is None:
                entries.append(summarize_verify(info.client_id, None))
                continue
            with store:
                hold = functools.partial(state.leases.hold, info.client_id)
                report = verify_store(store, hold=hold)
        except (ChunkdError, sqlite3.Error, OSError) as e:
            # A database that cannot even be opened fails its verify; the others still run.
            message = f"database {info.db_path} cannot be read: {type(e).__name__}: {e}"
            DAMAGED.mark(info.client_id, message)
            _log.error(log.VERIFY_FAILED, client=info.client_id, problems=[message])
            problem = {"round": None, "chunk_id": None, "chunk_hash": None, "problem": message}
            entries.append(
                {**summarize_verify(info.client_id, None), "ok": False, "problems": [problem]}
            )
            continue
        entry = summarize_verify(info.client_id, report)
        if report.ok:
            _log.info(
                log.VERIFY_PASSED,
                client=info.client_id,
                rounds=report.rounds_checked,
                chunks=report.chunks_checked,
            )
        else:
            _log.error(log.VERIFY_FAILED, client=info.client_id, problems=entry["problems"])
        entries.append(entry)
    return {"ok": all(e["ok"] for e in entries), "clients": entries}


def restore(state: DaemonState, request: Request, conn: Connection) -> Result:
    info = _client(state, request.client_id, conn.access)
    started = time.monotonic()
    with _open_store(info) as store:
        round_num = _round_to_serve(store, request)
        # Lease first, then look: once held, retention cannot remove the round under us.
        with state.leases.hold(info.client_id, round_num):
            stored = store.get_round(round_num)
            header: dict[str, object] = {
                "transfer": request.transfer,
                "client": info.client_id,
                "round": round_num,
                "bytes": stored.file_size,
                "sha256": stored.file_sha256,
            }
            fields = {"client": info.client_id, "round": round_num, "mode": request.transfer}
            try:
                sent = _send_output(
                    conn,
                    request,
                    header,
                    lambda write: restore_round(store, round_num, write),
                    produce_digest=lambda result: result.file_sha256,  # type: ignore[attr-defined]
                )
            except (PeerGoneError, ChunkdError) as e:
                code = e.code if isinstance(e, ChunkdError) else "disconnected"
                _log.warning(log.RESTORE_FAILED, **fields, error_code=code, error=str(e))
                raise
    duration_ms = _ms_since(started)
    mb_per_s = round(sent.bytes_sent / 1e3 / duration_ms, 1) if duration_ms else 0.0
    _log.info(
        log.RESTORE_SERVED,
        **fields,
        bytes=sent.bytes_sent,
        sha256=sent.sha256,
        duration_ms=duration_ms,
        mb_per_s=mb_per_s,
    )
    return _answer(request, header, sent)


def export(state: DaemonState, request: Request, conn: Connection) -> Result:
    """Stream the round's tensors as safetensors: no temporary file, memory bounded by the
    largest strided tensor's storage (:mod:`chunkd.export`)."""
    info = _client(state, request.client_id, conn.access)
    with _open_store(info) as store:
        round_num = _round_to_serve(store, request)
        with (
            state.leases.hold(info.client_id, round_num),
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunkd-export") as worker,
        ):
            stored = StoredRound(store, round_num, worker)
            plan = plan_safetensors(stored)
            header: dict[str, object] = {
                "transfer": request.transfer,
                "client": info.client_id,
                "round": round_num,
                "format": request.export_format,
                "tensors": plan.tensor_count,
                "bytes": plan.total_bytes,
            }
            sent = _send_output(
                conn, request, header, lambda write: stream_safetensors(stored, plan, write)
            )
    return _answer(request, header, sent)


def prune(state: DaemonState, request: Request, conn: Connection) -> Result:
    infos = _selected_clients(state, request.client_id, conn.access)
    # Submit every lane first: they prune in parallel while we wait on each in turn.
    futures = [(info, state.submit_prune(info.client_id, request.dry_run)) for info in infos]
    entries = [
        summarize_prune(info.client_id, _wait(future, f"prune of client {info.client_id!r}"))
        for info, future in futures
    ]
    return {"dry_run": request.dry_run, "clients": entries}


def ingest(state: DaemonState, request: Request, conn: Connection) -> Result:
    info = _client(state, request.client_id, conn.access)
    assert request.path is not None  # required by parse_request
    # The daemon reads only beneath the client's directory (SPEC.md), and never by resolving
    # a path and opening it later: the path is taken lexically (the directory as configured,
    # or as the caller may have spelled it resolved) and opened here, and again by the lane,
    # component by component without following links (chunkd.safepath).
    requested = Path(request.path)
    relative = _relative_in(requested, info.directory)
    if relative is None:
        relative = _relative_in(requested, info.directory.resolve())
    if relative is None:
        raise ForbiddenError(
            f"{request.path} is outside the directory of client {info.client_id!r} "
            f"({info.directory}); the daemon ingests only from there"
        )
    path = info.directory / relative
    try:
        safepath.open_beneath(info.directory, path).close()
    except FileNotFoundError:
        raise NotFoundError(f"no checkpoint file at {request.path}") from None
    future = state.submit_ingest(info.client_id, path, request.round_num)
    result = _wait(future, f"ingest of {request.path}")
    return summarize_ingest(info.client_id, result)


def _relative_in(path: Path, directory: Path) -> PurePath | None:
    try:
        return safepath.relative_to_directory(path, directory)
    except ForbiddenError:
        return None


#: The dispatch table: every command of :data:`chunkd.protocol.COMMANDS`.
HANDLERS: Final[Mapping[str, Handler]] = {
    "ping": ping,
    "status": status,
    "list": list_clients,
    "verify": verify,
    "restore": restore,
    "export": export,
    "prune": prune,
    "ingest": ingest,
}


def handle(state: DaemonState, request: Request, conn: Connection) -> Result:
    """Run the handler of ``request.cmd``; what the server calls for every valid request."""
    return HANDLERS[request.cmd](state, request, conn)
