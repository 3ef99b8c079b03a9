"""One request line in, exactly one answer and one log line out: the boundary of a request.

Split from :mod:`chunkd.daemon.server` (which owns the socket, the connections and their slots):
here a line is parsed, its descriptors checked against its command, the peer's right to send
it checked, the handler run, and every exception turned into an answer and a log line. Runs on
the request's worker thread; the log context (peer uid/gid/pid) is bound by the caller.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from chunkd import log
from chunkd.daemon.connection import RequestChannel
from chunkd.daemon.output import Connection, PeerGoneError, Result, Streamed
from chunkd.daemon.state import DaemonState
from chunkd.errors import ChunkdError, RequestError
from chunkd.protocol import TRANSFER_FD, Request, describe_error, encode_ok, parse_request

Dispatch = Callable[[DaemonState, Request, Connection], Result]

#: The server's logger name: request.* lines keep the ``logger`` they have always had.
_log = log.get_logger("chunkd.daemon.server")


def answer(dispatch: Dispatch, state: DaemonState, channel: RequestChannel, line: bytes) -> bool:
    """Serve one request line: exactly one answer, one log line. False: close the connection.

    The boundary of a request: every exception ends here, as an answer and a log line.
    """
    started = time.monotonic()
    fields: dict[str, object] = {}
    try:
        request = parse_request(line)
        fields = _request_fields(request)
        _check_fds(request, channel.fd_count)
        if not (request.cmd == "prune" and request.dry_run):
            # a dry run changes nothing: a tenant may preview its own clients (issue 10)
            channel.access.check_command(request.cmd)
        result = dispatch(state, request, channel)
        if not isinstance(result, Streamed):
            channel.send(encode_ok(result))
    except PeerGoneError as e:
        _log.info(
            log.REQUEST_REJECTED,
            **fields,
            duration_ms=_ms_since(started),
            error_code="disconnected",
            error=str(e),
        )
        return False
    except ChunkdError as e:
        code, _ = describe_error(e)
        event = log.REQUEST_FAILED if code == "internal" else log.REQUEST_REJECTED
        _log.warning(event, **fields, duration_ms=_ms_since(started), error_code=code, error=str(e))
        return _send_error(channel, e)
    except Exception as e:  # the connection handler is a boundary (STYLE.md, Part 3)
        _log.exception(
            log.REQUEST_FAILED,
            **fields,
            duration_ms=_ms_since(started),
            error_code="internal",
            error=f"{type(e).__name__}: {e}",
        )
        return _send_error(channel, e)
    _log.info(log.REQUEST_SERVED, **fields, duration_ms=_ms_since(started))
    return True


def _check_fds(request: Request, fd_count: int) -> None:
    wants_fd = request.cmd in {"restore", "export"} and request.transfer == TRANSFER_FD
    if wants_fd and fd_count != 1:
        raise RequestError(
            f'{request.cmd}: "transfer": "fd" needs exactly one file descriptor sent with the '
            f"request line (SCM_RIGHTS), got {fd_count}"
        )
    if not wants_fd and fd_count:
        raise RequestError(f"{request.cmd}: this request takes no file descriptor")


def _request_fields(request: Request) -> dict[str, object]:
    fields: dict[str, object] = {"cmd": request.cmd}
    if request.client_id is not None:
        fields["client"] = request.client_id
    if request.round_num is not None:
        fields["round"] = request.round_num
    return fields


def _send_error(channel: RequestChannel, exc: BaseException) -> bool:
    try:
        channel.send_error(exc)
    except PeerGoneError:
        return False
    return True


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1e3, 1)
