"""chunkd.log: the JSON line contract of SPEC.md "Logs", the stdlib bridge, and the event names."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import queue
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import structlog

from chunkd import log as chunkd_log
from chunkd.errors import ConfigError
from chunkd.log import configure_logging, get_logger

REPO = Path(__file__).resolve().parents[2]
TIMESTAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")

#: Every event SPEC.md "Logs" names, plus those the brief for log.py lists.
SPEC_EVENTS = {
    "daemon.started",
    "daemon.ready",
    "daemon.stopping",
    "daemon.stopped",
    "client.added",
    "client.removed",
    "checkpoint.detected",
    "checkpoint.ingested",
    "checkpoint.duplicate",
    "checkpoint.rejected",
    "checkpoint.retrying",
    "checkpoint.deleted",
    "ingest.failed",
    "round.replaced",
    "retention.pruned",
    "retention.failed",
    "restore.served",
    "restore.failed",
    "request.rejected",
    "request.served",
    "verify.failed",
    "verify.passed",
    "watcher.fallback_polling",
    "watcher.overflow",
    "scan.completed",
    "store.orphans_removed",
    "socket.bound",
    "config.invalid",
}


def _pythonpath() -> str:
    """The checkout first, so the child imports this chunkd whether or not it is installed."""
    return os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)


def _strict_json(line: str) -> dict[str, object]:
    """Parse like jq would: NaN/Infinity are not JSON."""

    def _reject(token: str) -> object:
        raise ValueError(f"non-standard JSON constant {token}")

    value = json.loads(line, parse_constant=_reject)
    assert isinstance(value, dict)
    return value


def _assert_contract(record: dict[str, object]) -> None:
    assert isinstance(record["timestamp"], str)
    assert TIMESTAMP_RE.match(record["timestamp"]), record["timestamp"]
    datetime.strptime(record["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert record["level"] in {"debug", "info", "warning", "error", "critical"}
    assert isinstance(record["event"], str)
    assert record["event"]


@pytest.fixture(autouse=True)
def _isolated_logging() -> Iterator[None]:
    """configure_logging changes process-wide state; put it back for the next test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    aps = logging.getLogger("apscheduler")
    aps_level = aps.level
    structlog.contextvars.clear_contextvars()
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    aps.setLevel(aps_level)
    logging.captureWarnings(False)
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    records = [_strict_json(line) for line in stream.getvalue().splitlines()]
    for record in records:
        _assert_contract(record)
    return records


# --- through a real pipe, as under systemd ----------------------------------------------------

CHILD = textwrap.dedent(
    """
    import logging, sys
    from pathlib import Path
    from chunkd.log import configure_logging, get_logger, DAEMON_STARTED, INGEST_FAILED

    configure_logging()  # auto: stdout is a pipe here, so JSON
    log = get_logger("chunkd.daemon.service")
    log.info(DAEMON_STARTED, socket=Path("/run/chunkd/chunkd.sock"))
    sys.stdin.readline()  # the parent must already have the line above
    logging.getLogger("watchdog.observers").info("watching %s", "/srv/fl")
    logging.getLogger("apscheduler.scheduler").info("Added job %r", "prune")
    logging.getLogger("apscheduler.scheduler").warning("Run time of job %r was missed", "scan")
    try:
        raise KeyError("client_9")
    except KeyError:
        log.exception(INGEST_FAILED, error_code="internal")
        logging.getLogger("some.library").exception("library failed")
    log.debug("not.shown")
    sys.stdin.readline()
    """
)


def _reader(stream: io.TextIOBase, out: queue.Queue[str | None]) -> None:
    for line in stream:
        out.put(line)
    out.put(None)


def test_json_lines_through_a_pipe_are_flushed_and_complete() -> None:
    env = {**os.environ, "PYTHONPATH": _pythonpath()}
    env.pop("PYTHONUNBUFFERED", None)  # the flush must come from chunkd, not the environment
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
    try:
        first = lines.get(timeout=20)
        assert first is not None, proc.stderr.read() if proc.stderr else ""
        assert proc.poll() is None, "the child must still be blocked on stdin"
        started = _strict_json(first)
        _assert_contract(started)
        assert started["event"] == "daemon.started"
        assert started["level"] == "info"
        assert started["logger"] == "chunkd.daemon.service"
        assert started["socket"] == "/run/chunkd/chunkd.sock"

        proc.stdin.write("go\n")
        proc.stdin.flush()
        rest: list[dict[str, object]] = []
        while len(rest) < 4:
            line = lines.get(timeout=20)
            assert line is not None, proc.stderr.read() if proc.stderr else ""
            rest.append(_strict_json(line))
        assert proc.poll() is None, "lines arrive before the process exits"
        proc.stdin.close()
        assert proc.wait(timeout=20) == 0
        assert lines.get(timeout=20) is None, "nothing else: no apscheduler INFO, no debug"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    for record in rest:
        _assert_contract(record)
    watchdog_line, aps_line, ours, foreign = rest
    assert watchdog_line["logger"] == "watchdog.observers"
    assert watchdog_line["event"] == "watching /srv/fl"
    assert watchdog_line["level"] == "info"
    assert aps_line["logger"] == "apscheduler.scheduler"
    assert aps_line["level"] == "warning"
    assert aps_line["event"] == "Run time of job 'scan' was missed"

    for record in (ours, foreign):
        assert record["level"] == "error"
        exception = record["exception"]
        assert isinstance(exception, list)
        assert exception[0]["exc_type"] == "KeyError"
        assert "client_9" in exception[0]["exc_value"]
        assert exception[0]["frames"], "the traceback's frames are kept"
    assert ours["event"] == "ingest.failed"
    assert ours["error_code"] == "internal"
    assert foreign["event"] == "library failed"
    assert foreign["logger"] == "some.library"


# --- in process ---------------------------------------------------------------------------------


def test_json_line_has_the_contract_fields_first() -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    get_logger("chunkd.test").info(chunkd_log.CHECKPOINT_INGESTED, client="3", round=12, chunks=10)
    (record,) = _lines(out)
    assert list(record)[:4] == ["timestamp", "level", "event", "logger"]
    assert record == {
        "timestamp": record["timestamp"],
        "level": "info",
        "event": "checkpoint.ingested",
        "logger": "chunkd.test",
        "client": "3",
        "round": 12,
        "chunks": 10,
    }


def test_configuring_twice_does_not_duplicate_lines() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("json", stream=first)
    configure_logging("json", stream=second)
    get_logger("chunkd.test").info(chunkd_log.SCAN_COMPLETED)
    logging.getLogger("watchdog").warning("once")
    assert first.getvalue() == ""
    assert [r["event"] for r in _lines(second)] == ["scan.completed", "once"]
    ours = [h for h in logging.getLogger().handlers if type(h).__name__ == "_ChunkdHandler"]
    assert len(ours) == 1


def test_awkward_values_never_break_a_line() -> None:
    out = io.StringIO()
    configure_logging("json", stream=out)
    log = get_logger("chunkd.test")
    log.info(
        chunkd_log.CHECKPOINT_REJECTED,
        path=Path("/srv/fl/client_1/model_round_3.pth"),
        error=ValueError("bad zip"),
        dedup_ratio=float("nan"),
        mb_per_s=math.inf,
        ids={"b", "a"},
        payload=b"\x00" * 1000,
        obj=object(),
    )
    log.info(chunkd_log.RETENTION_PRUNED, removed={(1, 2): "tuple key"})
    rejected, pruned = _lines(out)
    assert rejected["path"] == "/srv/fl/client_1/model_round_3.pth"
    assert rejected["error"] == "ValueError: bad zip"
    assert rejected["dedup_ratio"] == "nan"
    assert rejected["mb_per_s"] == "inf"
    assert rejected["ids"] == ["a", "b"]
    assert rejected["payload"] == "<1000 bytes>"
    assert str(rejected["obj"]).startswith("<object object")
    assert pruned["removed"] == {"(1, 2)": "tuple key"}


def test_apscheduler_info_is_demoted_unless_debug() -> None:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    aps = logging.getLogger("apscheduler.executors.default")
    aps.info('Running job "prune"')
    aps.warning("Job missed")
    assert [r["event"] for r in _lines(out)] == ["Job missed"]

    out = io.StringIO()
    configure_logging("json", "debug", stream=out)
    aps.info('Running job "prune"')
    get_logger("chunkd.test").debug("step.detail")
    assert [r["event"] for r in _lines(out)] == ['Running job "prune"', "step.detail"]
    assert all(r["level"] in {"info", "debug"} for r in _lines(out))


def test_level_filters_structlog_and_stdlib_alike() -> None:
    out = io.StringIO()
    configure_logging("json", "warning", stream=out)
    log = get_logger("chunkd.test")
    log.info("dropped")
    logging.getLogger("watchdog").info("dropped too")
    log.warning(chunkd_log.WATCHER_OVERFLOW)
    log.critical("critical.thing")
    assert [(r["level"], r["event"]) for r in _lines(out)] == [
        ("warning", "watcher.overflow"),
        ("critical", "critical.thing"),
    ]


def test_contextvars_bound_in_a_thread_stay_in_that_thread() -> None:
    out = io.StringIO()
    configure_logging("json", stream=out)
    log = get_logger("chunkd.daemon.lanes")

    def lane() -> None:
        structlog.contextvars.bind_contextvars(client="7", round=3)
        log.info(chunkd_log.CHECKPOINT_DETECTED)
        logging.getLogger("watchdog").info("foreign inside the lane")

    thread = threading.Thread(target=lane)
    thread.start()
    thread.join()
    log.info(chunkd_log.DAEMON_READY)
    detected, foreign, ready = _lines(out)
    assert (detected["client"], detected["round"]) == ("7", 3)
    assert list(detected)[4:6] == ["client", "round"]
    assert (foreign["client"], foreign["round"]) == ("7", 3)
    assert "client" not in ready


def test_get_logger_defaults_to_the_callers_module() -> None:
    out = io.StringIO()
    configure_logging("json", stream=out)
    get_logger().info(chunkd_log.VERIFY_PASSED)
    (record,) = _lines(out)
    assert record["logger"] == __name__


def test_warnings_come_out_as_json() -> None:
    out = io.StringIO()
    configure_logging("json", stream=out)
    logging.getLogger("py.warnings").warning("DeprecationWarning: old")
    (record,) = _lines(out)
    assert record["logger"] == "py.warnings"


def test_console_is_for_humans_and_auto_picks_json_off_a_tty() -> None:
    out = io.StringIO()  # not a tty
    configure_logging("auto", stream=out)
    get_logger("chunkd.test").info(chunkd_log.DAEMON_READY)
    _lines(out)

    out = io.StringIO()
    configure_logging("console", stream=out)
    get_logger("chunkd.test").info(chunkd_log.DAEMON_READY, clients=2)
    text = out.getvalue()
    assert "daemon.ready" in text
    assert "clients=2" in text
    assert "\x1b[" not in text, "no colour codes when the stream is not a terminal"
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_console_renders_exceptions() -> None:
    out = io.StringIO()
    configure_logging("console", stream=out)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        get_logger("chunkd.test").exception(chunkd_log.INGEST_FAILED)
    assert "RuntimeError: boom" in out.getvalue()


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"log_format": "xml"}, "log_format"), ({"log_level": "verbose"}, "log_level")],
)
def test_invalid_settings_name_the_key(kwargs: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        configure_logging(stream=io.StringIO(), **kwargs)


def test_event_constants_are_stable_dotted_names() -> None:
    constants = {
        name: value
        for name, value in vars(chunkd_log).items()
        if name.isupper() and isinstance(value, str) and "." in value
    }
    for name, value in constants.items():
        assert name == value.upper().replace(".", "_"), name
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*\.[a-z]+(_[a-z]+)*", value), value
    assert len(set(chunkd_log.ALL_EVENTS)) == len(chunkd_log.ALL_EVENTS)
    assert set(chunkd_log.ALL_EVENTS) == set(constants.values())
    assert not SPEC_EVENTS - set(chunkd_log.ALL_EVENTS), "an event SPEC.md names is missing"


def test_a_logger_taken_before_configure_follows_the_configuration() -> None:
    early = get_logger("chunkd.early")  # like a module-level `log = get_logger(__name__)`
    out = io.StringIO()
    configure_logging("json", stream=out)
    early.info(chunkd_log.SOCKET_BOUND)
    (record,) = _lines(out)
    assert record["logger"] == "chunkd.early"
