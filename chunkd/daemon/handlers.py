"""One function per socket command: ``(state, request, connection) -> result``. No socket code.

The server (``server.py``) has already validated the request (:func:`chunkd.protocol.
parse_request`) and checked who may send it; a handler only does the work. It sees the daemon
through :class:`~chunkd.daemon.state.DaemonState` and the client through the narrow
:class:`Connection` below, which the server implements. Errors are raised, never answered here:
the server turns them into the one answer a request gets.

Reads (list, verify, restore, export) open their own read-only :class:`ChunkStore` in the
connection's thread and never wait for a lane; ``list`` (:mod:`chunkd.daemon.listing`) opens
only the databases that changed since it last read them. Writes (ingest, prune) are handed to
the client's lane, the database's only writer, and waited for with a timeout; past it the
answer is ``busy`` while the job itself still runs.

Restore and export write checkpoint bytes through :mod:`chunkd.daemon.output` (a passed
descriptor or frames, never blocking past the write timeout). Who may read which client is
``conn.access`` (:mod:`chunkd.daemon.access`).
"""

from __future__ import annotations

import functools
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Final, TypeVar

from chunkd import __version__, log, safepath
from chunkd.daemon import listing
from chunkd.daemon.listing import DAMAGED, SUMMARIES, has_database, open_store_if_any
from chunkd.daemon.output import (  # noqa: F401 - STREAMED etc. re-exported for the server
    STREAMED,
    Connection,
    PeerGoneError,
    Result,
    Streamed,
    answer_for,
    send_output,
)
from chunkd.daemon.progress import verify_progress, verifying
from chunkd.daemon.state import ClientInfo, DaemonState
from chunkd.errors import BusyError, ChunkdError, ForbiddenError, NotFoundError
from chunkd.export import StoredRound, plan_safetensors, stream_safetensors
from chunkd.protocol import Request
from chunkd.restore import restore_round, unknown_client_message
from chunkd.store import ChunkStore
from chunkd.summary import (
    summarize_forget,
    summarize_ingest,
    summarize_prune,
    summarize_verify,
)
from chunkd.verify import verify_store

if TYPE_CHECKING:
    from chunkd.daemon.access import Access

#: How long a request waits for its ingest or prune on the lane before answering ``busy``.
LANE_TIMEOUT_S: Final = 300.0
_log = log.get_logger(__name__)
_T = TypeVar("_T")


Handler = Callable[[DaemonState, Request, Connection], Result]


# -- helpers -------------------------------------------------------------------------------------


def _client(state: DaemonState, client_id: str | None, access: Access) -> ClientInfo:
    """The client asked for, if it exists and the peer may read it (else not_found, forbidden).

    Whether a client exists is no secret (``status`` counts them); its data is.
    """
    assert client_id is not None  # parse_request requires it for every command that calls this
    clients = state.clients()
    info = clients.get(client_id)
    if info is None:  # the ids it may see: an admin all, a tenant its own (issue 21)
        known = [c.client_id for c in access.readable(clients.values())]
        label = "known clients" if access.admin else "clients you may read"
        where = "is watched by this daemon"
        raise NotFoundError(unknown_client_message(client_id, known, where, label))
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


def _open_store(info: ClientInfo) -> ChunkStore:
    if not has_database(info):
        raise NotFoundError(f"client {info.client_id!r} has no stored rounds yet")
    return ChunkStore.open_reader(info.db_path)


def _wait(future: Future[_T], what: str) -> _T:
    try:
        return future.result(timeout=LANE_TIMEOUT_S)
    except FutureTimeoutError:
        raise BusyError(
            f"{what} did not finish within {LANE_TIMEOUT_S:.0f} s; it stays queued (see the log)"
        ) from None


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1e3, 1)


def _round_to_serve(store: ChunkStore, request: Request) -> int:
    return request.round_num if request.round_num is not None else store.latest_round()


# -- the commands --------------------------------------------------------------------------------


def ping(state: DaemonState, request: Request, conn: Connection) -> Result:
    return {"pong": True, "version": __version__, "pid": os.getpid()}


def status(state: DaemonState, request: Request, conn: Connection) -> Result:
    """Daemon health for anyone; per-client details only for the clients the peer may read
    (file paths and errors of other tenants are theirs). The totals stay daemon-wide."""
    result = dict(state.status())
    damaged = DAMAGED.snapshot()
    if damaged:
        errors = result.get("errors", 0)
        result["errors"] = (errors if isinstance(errors, int) else 0) + len(damaged)
    result["damaged_databases"] = damaged
    # what `list` keeps between requests (bounded by the clients watched) and how often it
    # reused a summary instead of opening the database (chunkd.daemon.summaries)
    result["list_cache"] = SUMMARIES.counts()
    result["verifying"] = verifying()  # how far each verify under way has got
    if not conn.access.admin:
        removed = result.get("removed_clients")
        clients = state.clients()
        readable_infos = conn.access.readable(clients.values())
        readable = {info.client_id for info in readable_infos}
        per_client = result.get("clients")
        if isinstance(per_client, dict):
            result["clients"] = {k: v for k, v in per_client.items() if k in readable}
        for key in ("last_ingest", "last_error"):
            last = result.get(key)
            if isinstance(last, dict) and last.get("client") not in readable:
                result[key] = None
        result["verifying"] = [v for v in result["verifying"] if v["client"] in readable]
        result["ingesting"] = _own_ingests(result.get("ingesting"), readable_infos)
        result["damaged_databases"] = {k: v for k, v in damaged.items() if k in readable}
        if isinstance(removed, dict):
            result["removed_clients"] = {k: v for k, v in removed.items() if k in readable}
    return result


def _own_ingests(ingesting: object, readable: Iterable[ClientInfo]) -> list[object]:
    """The ingests under way in the peer's own client directories (paths are tenants' own)."""
    directories = [info.directory for info in readable]
    return [
        item
        for item in (ingesting if isinstance(ingesting, list) else [])
        if isinstance(item, dict)
        and any(Path(str(item.get("path"))).is_relative_to(d) for d in directories)
    ]


def list_clients(state: DaemonState, request: Request, conn: Connection) -> Result:
    return listing.list_clients(state, _selected_clients(state, request.client_id, conn.access))


def verify(state: DaemonState, request: Request, conn: Connection) -> Result:
    entries = []
    for info in _selected_clients(state, request.client_id, conn.access):
        try:
            store = open_store_if_any(info)
            if store is None:
                entries.append(summarize_verify(info.client_id, None))
                continue
            with store:
                hold = functools.partial(state.leases.hold, info.client_id)
                stats = store.stats()
                # status's ``verifying`` shows how far it got: chunkd verify's bar moves
                with verify_progress(info.client_id, stats.chunks + stats.rounds) as step:
                    report = verify_store(store, hold=hold, step=step)
        except BusyError:
            raise  # a writer held the database past the busy timeout: busy, not damaged
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
            stored = store.get_round(round_num, request.generation)
            header: dict[str, object] = {
                "transfer": request.transfer,
                "client": info.client_id,
                "round": round_num,
                "generation": stored.generation,
                "bytes": stored.file_size,
                "sha256": stored.file_sha256,
            }
            fields = {"client": info.client_id, "round": round_num, "mode": request.transfer}
            try:
                sent = send_output(
                    conn,
                    request,
                    header,
                    lambda write, into_file: restore_round(
                        store,
                        round_num,
                        write,
                        generation=request.generation,
                        verify_chunks=not into_file,
                    ),
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
    return answer_for(request, header, sent)


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
            version = store.get_round(round_num, request.generation)
            stored = StoredRound(store, round_num, worker, request.generation)
            plan = plan_safetensors(stored)
            header: dict[str, object] = {
                "transfer": request.transfer,
                "client": info.client_id,
                "round": round_num,
                "generation": version.generation,
                "format": request.export_format,
                "tensors": plan.tensor_count,
                "bytes": plan.total_bytes,
            }
            sent = send_output(
                conn,
                request,
                header,
                lambda write, _into_file: stream_safetensors(stored, plan, write),
            )
    return answer_for(request, header, sent)


def prune(state: DaemonState, request: Request, conn: Connection) -> Result:
    infos = _selected_clients(state, request.client_id, conn.access)
    # Submit every lane first: they prune in parallel while we wait on each in turn.
    futures = [(info, state.submit_prune(info.client_id, request.dry_run)) for info in infos]
    entries = [
        summarize_prune(info.client_id, _wait(future, f"prune of client {info.client_id!r}"))
        for info, future in futures
    ]
    return {"dry_run": request.dry_run, "clients": entries}


def forget(state: DaemonState, request: Request, conn: Connection) -> Result:
    """Remove one named round version (admins only: :mod:`chunkd.daemon.access`)."""
    info = _client(state, request.client_id, conn.access)
    assert request.round_num is not None  # required by parse_request
    future = state.submit_forget(
        info.client_id, int(request.round_num), request.generation, request.dry_run
    )
    result = _wait(future, f"forget of round {request.round_num} of client {info.client_id!r}")
    return summarize_forget(info.client_id, result)


def ingest(state: DaemonState, request: Request, conn: Connection) -> Result:
    info = _client(state, request.client_id, conn.access)
    assert request.path is not None  # required by parse_request
    # The daemon reads only beneath the client's directory (docs/SPEC.md "The socket protocol"),
    # never by resolving
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
            f"({info.directory}); the daemon ingests only from there: put the file there and "
            "give that path, or store it without the daemon with `chunkd ingest PATH --db "
            "DATABASE`"
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
    "forget": forget,
    "ingest": ingest,
}


def handle(state: DaemonState, request: Request, conn: Connection) -> Result:
    """Run the handler of ``request.cmd``; what the server calls for every valid request."""
    return HANDLERS[request.cmd](state, request, conn)
