"""structlog set-up for the daemon and the CLI, and the names of every log event.

docs/SPEC.md "Logs" promises operators one JSON object per line on stdout, flushed as written, with
``timestamp`` (ISO 8601 UTC), ``level`` and a stable dotted ``event``; a terminal gets the same
lines rendered for humans. Everything goes through *one* stdlib handler whose formatter is
structlog's ``ProcessorFormatter``: structlog's own lines and foreign ``logging`` records (watchdog,
APScheduler, ``warnings``) then share one renderer, one lock and one stream, so lines from different
threads never interleave and a library's record is as greppable as ours.

Event names are constants here so that each event is emitted from one place and a typo is an
``ImportError`` rather than a silently new event name (STYLE.md, Part 3 "Log events").
Only ``chunkd.daemon`` and ``chunkd.cli`` call :func:`configure_logging`; engine modules may take a
logger from :func:`get_logger` and stay quiet until a boundary configures the output.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Mapping
from datetime import date, datetime, timezone
from pathlib import PurePath
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from chunkd.errors import ConfigError

# --- event names (docs/SPEC.md, "Logs"; `noun.state`, never interpolated) ---------------------
DAEMON_STARTED = "daemon.started"
DAEMON_READY = "daemon.ready"
DAEMON_STOPPING = "daemon.stopping"
DAEMON_STOPPED = "daemon.stopped"
DAEMON_FAILED = "daemon.failed"
CLIENT_ADDED = "client.added"
CLIENT_REMOVED = "client.removed"
CHECKPOINT_DETECTED = "checkpoint.detected"
CHECKPOINT_INGESTED = "checkpoint.ingested"
CHECKPOINT_DUPLICATE = "checkpoint.duplicate"
CHECKPOINT_REJECTED = "checkpoint.rejected"
CHECKPOINT_RETRYING = "checkpoint.retrying"
CHECKPOINT_SUPERSEDED = "checkpoint.superseded"
CHECKPOINT_DELETED = "checkpoint.deleted"
INGEST_FAILED = "ingest.failed"
ROUND_REPLACED = "round.replaced"
ROUND_FORGOTTEN = "round.forgotten"  # chunkd forget: an operator removed one version
RETENTION_STARTED = "retention.started"  # debug: a scheduled pass, with the clients it visits
RETENTION_PRUNED = "retention.pruned"
RETENTION_FAILED = "retention.failed"
RESTORE_SERVED = "restore.served"
RESTORE_FAILED = "restore.failed"
REQUEST_REJECTED = "request.rejected"
REQUEST_SERVED = "request.served"
REQUEST_FAILED = "request.failed"
VERIFY_FAILED = "verify.failed"
VERIFY_PASSED = "verify.passed"
WATCHER_FALLBACK_POLLING = "watcher.fallback_polling"
WATCHER_OVERFLOW = "watcher.overflow"
SCAN_COMPLETED = "scan.completed"
SCAN_FAILED = "scan.failed"
STORE_ORPHANS_REMOVED = "store.orphans_removed"
SOCKET_BOUND = "socket.bound"
CONFIG_INVALID = "config.invalid"
REPLICA_UPLOADED = "replica.uploaded"  # docs/REPLICA.md
REPLICA_FAILED = "replica.failed"
REPLICA_PRUNED = "replica.pruned"
REPLICA_QUARANTINED = "replica.quarantined"  # an unusable manifest the sweep left in place
REPLICA_LOCKS_RELEASED = "replica.locks_released"  # a killed predecessor's locks, removed
WATCH_ROOT_MISSING = "watch_root.missing"
LAYOUT_UNSAFE = "layout.unsafe"  # tenants left in the group that reads every client directory
ATTEMPT_UNRECORDED = "attempt.unrecorded"
CHECKPOINT_PROGRESS = "checkpoint.progress"
METRICS_FAILED = "metrics.failed"  # the metrics textfile could not be written

#: Every event chunkd emits; tests check the set against the constants and docs/SPEC.md "Logs".
ALL_EVENTS: tuple[str, ...] = (
    DAEMON_STARTED,
    DAEMON_READY,
    DAEMON_STOPPING,
    DAEMON_STOPPED,
    DAEMON_FAILED,
    CLIENT_ADDED,
    CLIENT_REMOVED,
    CHECKPOINT_DETECTED,
    CHECKPOINT_INGESTED,
    CHECKPOINT_DUPLICATE,
    CHECKPOINT_REJECTED,
    CHECKPOINT_RETRYING,
    CHECKPOINT_SUPERSEDED,
    CHECKPOINT_DELETED,
    INGEST_FAILED,
    ROUND_REPLACED,
    ROUND_FORGOTTEN,
    RETENTION_STARTED,
    RETENTION_PRUNED,
    RETENTION_FAILED,
    RESTORE_SERVED,
    RESTORE_FAILED,
    REQUEST_REJECTED,
    REQUEST_SERVED,
    REQUEST_FAILED,
    VERIFY_FAILED,
    VERIFY_PASSED,
    WATCHER_FALLBACK_POLLING,
    WATCHER_OVERFLOW,
    SCAN_COMPLETED,
    SCAN_FAILED,
    STORE_ORPHANS_REMOVED,
    SOCKET_BOUND,
    CONFIG_INVALID,
    REPLICA_UPLOADED,
    REPLICA_FAILED,
    REPLICA_PRUNED,
    REPLICA_QUARANTINED,
    REPLICA_LOCKS_RELEASED,
    WATCH_ROOT_MISSING,
    LAYOUT_UNSAFE,
    ATTEMPT_UNRECORDED,
    CHECKPOINT_PROGRESS,
    METRICS_FAILED,
)

LOG_FORMATS: tuple[str, ...] = ("auto", "json", "console")
LOG_LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

#: Loggers whose INFO output is per-job chatter ("Added job", "Running job", "Job executed
#: successfully" every retention/rescan tick); they speak at WARNING unless we run at debug.
_CHATTY_LOGGERS: tuple[str, ...] = ("apscheduler",)

#: Keys every line has, in the order they lead the line.
_LEADING_KEYS: tuple[str, ...] = ("timestamp", "level", "event", "logger")
#: ...followed by the lane context, so `journalctl -o cat` reads left to right.
_ORDERED_KEYS: tuple[str, ...] = (*_LEADING_KEYS, "client", "round")


class _ChunkdHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the root handler we installed, so a second configure replaces it instead of adding.

    ``StreamHandler.emit`` flushes after every record, which is what keeps each line visible at
    once when stdout is a pipe to journald (block-buffered otherwise).
    """


def _format_timestamp(created_s: float) -> str:
    # Always six fractional digits (datetime.isoformat drops them when microsecond == 0), so the
    # field has one fixed shape that log tooling can parse with a single pattern.
    stamp = datetime.fromtimestamp(created_s, tz=timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _add_timestamp(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Stamp with the LogRecord's creation time: the moment of the call, for ours and foreign."""
    record = event_dict.get("_record")
    created_s = record.created if record is not None else time.time()
    event_dict["timestamp"] = _format_timestamp(created_s)
    return event_dict


def _order_keys(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    ordered = {key: event_dict.pop(key) for key in _ORDERED_KEYS if key in event_dict}
    ordered.update(event_dict)
    return ordered


def _json_default(obj: object) -> Any:
    """Turn what callers routinely log (paths, exceptions, sets, datetimes) into JSON values.

    A log call must never be what crashes a lane, so anything else becomes its ``str``.
    """
    structlog_repr = getattr(obj, "__structlog__", None)
    if callable(structlog_repr):
        return structlog_repr()
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, BaseException):
        return f"{type(obj).__name__}: {obj}"
    if isinstance(obj, (datetime, date)):
        return obj.isoformat()
    if isinstance(obj, (set, frozenset)):
        return sorted(str(item) for item in obj)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return f"<{memoryview(obj).nbytes} bytes>"  # never dump payloads into the journal
    return str(obj)


def _sanitize(value: Any) -> Any:
    """Make a value strict JSON: non-finite floats and non-string keys become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): _sanitize(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_sanitize(item) for item in value]
    return value


class _SafeJSONRenderer:
    """structlog's JSONRenderer, strict (no NaN, which `jq` and most parsers reject), never raising.

    The fast path is plain ``json.dumps``; only a line that fails (NaN ratio, tuple keys, a cycle)
    pays for the sanitising walk, and a line that still fails is replaced by one naming the error.
    """

    __slots__ = ("_render",)

    def __init__(self) -> None:
        self._render = structlog.processors.JSONRenderer(default=_json_default, allow_nan=False)

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        try:
            return str(self._render(logger, name, event_dict))
        except (TypeError, ValueError):
            pass
        try:
            return str(self._render(logger, name, _sanitize(event_dict)))
        except (TypeError, ValueError, RecursionError) as exc:
            fallback = {key: str(event_dict.get(key)) for key in _LEADING_KEYS}
            fallback["render_error"] = f"{type(exc).__name__}: {exc}"
            return json.dumps(fallback)


def _paths_as_text(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """The console renderer shows values by ``repr``: ``path=/x.pth``, not ``PosixPath(...)``."""
    for key, value in event_dict.items():
        if isinstance(value, PurePath):
            event_dict[key] = str(value)
    return event_dict


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # closed or not a real file
        return False


def _build_formatter(log_format: str, stream: TextIO) -> structlog.stdlib.ProcessorFormatter:
    renderer: Processor
    tail: list[Processor]
    if log_format == "console" or (log_format == "auto" and _is_tty(stream)):
        # ConsoleRenderer formats exc_info itself (and better than a dict would read on a tty).
        renderer = structlog.dev.ConsoleRenderer(colors=_is_tty(stream))
        tail = [_paths_as_text, renderer]
    else:
        # Locals are off: they would copy chunk buffers and client data into the journal.
        exceptions = structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )
        tail = [exceptions, _order_keys, _SafeJSONRenderer()]
    return structlog.stdlib.ProcessorFormatter(
        # Records from plain `logging`: the emitting thread's bound client/round apply too.
        foreign_pre_chain=[structlog.contextvars.merge_contextvars],
        processors=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            _add_timestamp,
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *tail,
        ],
    )


#: Functions shown every event as it is logged, whatever the log level (the metrics).
_TAPS: list[Callable[[Mapping[str, Any]], None]] = []


def add_tap(tap: Callable[[Mapping[str, Any]], None]) -> Callable[[], None]:
    """Show ``tap`` every structlog event (with its bound fields), before level filtering, so
    what is counted does not depend on ``log_level``; returns the function that removes it.

    A tap runs on the logging thread: it must be quick and must not log. One that raises is
    ignored for that event: metrics never break a log line.
    """
    _TAPS.append(tap)

    def remove() -> None:
        with contextlib.suppress(ValueError):
            _TAPS.remove(tap)

    return remove


def _run_taps(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    for tap in tuple(_TAPS):
        with contextlib.suppress(Exception):  # a metric is never worth a lost log line
            tap(event_dict)
    return event_dict


def configure_logging(
    log_format: str = "auto", log_level: str = "info", stream: TextIO | None = None
) -> None:
    """Route structlog and stdlib logging to one flushed stream; safe to call again.

    A second call (the CLI's ``serve`` after an early default, or tests) replaces our handler
    rather than stacking a second one, which would print every line twice.
    Raises :class:`ConfigError` naming the key, as for any other invalid setting.
    """
    fmt = log_format.strip().lower()
    if fmt not in LOG_FORMATS:
        raise ConfigError(f"log_format: {log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    level_name = log_level.strip().lower()
    if level_name not in LOG_LEVELS:
        choices = ", ".join(name for name in LOG_LEVELS if name != "warn")
        raise ConfigError(f"log_level: {log_level!r} is not one of {choices}")
    level = LOG_LEVELS[level_name]
    out = stream if stream is not None else sys.stdout

    handler = _ChunkdHandler(out)
    handler.setFormatter(_build_formatter(fmt, out))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _ChunkdHandler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    for name in _CHATTY_LOGGERS:
        # NOTSET (inherit) at debug, so going from info back to debug undoes the demotion.
        logging.getLogger(name).setLevel(
            logging.NOTSET if level <= logging.DEBUG else logging.WARNING
        )
    logging.captureWarnings(True)

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,  # a lane binds ``client`` here
            _run_taps,  # the metrics count every event, whatever the level
            # Drop below-level calls before any more work is done for them.
            structlog.stdlib.filter_by_level,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        context_class=dict,
        # Not cached: module-level loggers created before this call must pick up a reconfigure.
        cache_logger_on_first_use=False,
    )


def get_logger(name: str | None = None, **initial_values: Any) -> structlog.stdlib.BoundLogger:
    """A structlog logger named like a stdlib logger, so level filtering and ``logger`` agree.

    Without a name, the calling module's ``__name__`` is used, resolved here and now: structlog's
    own guess happens at the first log call and would name whichever module logs first.
    """
    if name is None:
        name = str(sys._getframe(1).f_globals.get("__name__", "chunkd"))
    return structlog.stdlib.get_logger(name, **initial_values)
