"""How ``chunkd serve`` fails to start: one line naming the config key, and an exit status.

Issue 10: a ``watch_root`` under a regular file used to end with ``chunkd: Not a directory: ...``
and exit 1, which is not JSON (it breaks ``journalctl ... | jq``), names no key, and is outside
the unit's ``RestartPreventExitStatus=78``, so systemd restarted the daemon forever. Now every
failure before ``READY=1`` is reported by :func:`report_startup_failure`:

* one line on stderr: a JSON object (``timestamp``, ``level``, ``event``, ``key``, ``error``,
  ``exit_status``) unless stderr is a terminal, where it is ``chunkd: <reason> (key: <key>)``;
* exit status 78 (``EX_CONFIG``) when the configuration is the cause: an invalid value, or a
  configured path that cannot be used (not a directory, not writable, too long, a file where a
  directory must be); 7 when another daemon holds the socket or a database (a restart later
  may succeed); 1 for anything else (a bug).

Code that touches a configured path during start-up runs inside :func:`startup_key`, which tags
an exception with the key it came from.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import TextIO

from chunkd import log
from chunkd.errors import EXIT_STATUS_BY_CODE, BusyError, ChunkdError, ConfigError

EXIT_CONFIG = 78
EXIT_BUSY = 7
EXIT_INTERNAL = 1

#: ``config /etc/chunkd/chunkd.toml: chunk_num: ...`` or ``socket: ...``: the key a ConfigError
#: message starts with (config.py and socketfile.py word them so).
_KEY_IN_MESSAGE = re.compile(r"^(?:config .*?: )?(?P<key>[a-z_]+(?:\[\d+\])?(?:\.[a-z_]+)*): ")
_ATTR = "startup_key"


@contextlib.contextmanager
def startup_key(key: str) -> Iterator[None]:
    """Tag any exception raised inside with the config ``key`` whose value was being used."""
    try:
        yield
    except BaseException as e:
        if getattr(e, _ATTR, None) is None:
            with contextlib.suppress(AttributeError):  # a few built-ins take no attributes
                setattr(e, _ATTR, key)
        raise


def failure_key(error: BaseException) -> str | None:
    """The config key an exception is about, if it is known."""
    key = getattr(error, _ATTR, None)
    if isinstance(key, str):
        return key
    if isinstance(error, ConfigError):
        match = _KEY_IN_MESSAGE.match(str(error))
        return match.group("key") if match else None
    return None


def exit_status_for(error: BaseException) -> int:
    if isinstance(error, ConfigError):
        return EXIT_CONFIG
    if isinstance(error, BusyError):
        return EXIT_BUSY
    if isinstance(error, OSError) and failure_key(error) is not None:
        return EXIT_CONFIG  # a configured path the daemon cannot use: restarting cannot help
    if isinstance(error, ChunkdError):
        return EXIT_STATUS_BY_CODE.get(error.code, EXIT_INTERNAL)
    return EXIT_INTERNAL


def describe(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        where = f": {error.filename}" if error.filename else ""
        return f"{error.strerror}{where}"
    if isinstance(error, ChunkdError):
        return " ".join(str(error).split())
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def report_startup_failure(error: BaseException, stream: TextIO | None = None) -> int:
    """Write the one line for a start-up failure; the exit status ``chunkd serve`` ends with."""
    out = stream if stream is not None else sys.stderr
    status = exit_status_for(error)
    key = failure_key(error)
    reason = describe(error)
    if _is_tty(out):
        where = f" (key: {key})" if key else ""
        out.write(f"chunkd: {reason}{where}\n")
    else:
        line = {
            "timestamp": datetime.fromtimestamp(time.time(), tz=timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%S.%fZ"
            ),
            "level": "error" if status == EXIT_CONFIG else "critical",
            "event": log.CONFIG_INVALID if status == EXIT_CONFIG else log.DAEMON_FAILED,
            "logger": "chunkd.daemon",
            "key": key,
            "error": reason,
            "error_type": type(error).__name__,
            "exit_status": status,
        }
        out.write(json.dumps(line) + "\n")
    out.flush()
    return status


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False
