"""The control socket's wire format: one request line in, one answer out, and the frame layout.

Pure (STYLE.md "P" module): no sockets, files, clocks or threads, so every rule here is tested
without a daemon and the server and the CLI cannot disagree about it. ``docs/PROTOCOL.md`` is the
prose version of this module; change both together.

A request is one JSON object on one line of at most :data:`MAX_LINE_BYTES` bytes. It is validated
completely before any handler runs: unknown, missing, duplicate and mistyped fields are
``bad_request`` with a message that names the field, so a handler only ever sees a
:class:`Request` whose values are already safe to use (a client id can be put in a path, a round
fits SQLite's INTEGER).

Checkpoint bytes never travel inside JSON. A ``restore`` or ``export`` answer is either written by
the daemon into a file descriptor the client passed with the request (``"transfer": "fd"``), or
streamed after a JSON header line as frames (``"transfer": "frames"``)::

    frame   = length (4 bytes, big-endian) + payload    1 <= length <= MAX_FRAME_BYTES
    end     = length 0, then the 32-byte SHA-256 of all payload bytes (the trailer)
    error   = length FRAME_ERROR (0xFFFFFFFF), then one JSON error answer line
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from chunkd.errors import ChunkdError, RequestError, UnknownCommandError

#: Longest request line accepted, newline excluded (docs/SPEC.md, "at most 64 KiB a line").
MAX_LINE_BYTES: Final = 65536
#: Rounds are SQLite INTEGERs: 0 <= round < 2**63.
MAX_ROUND: Final = 2**63 - 1
#: The round value that means "the highest stored round" (restore, export).
LATEST: Final = "latest"
#: PATH_MAX on Linux; a longer path cannot be opened anyway.
MAX_PATH_BYTES: Final = 4096

#: Same rule as :data:`chunkd.config.CLIENT_ID_PATTERN` (a pure module may not import config).
CLIENT_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")

TRANSFER_FD: Final = "fd"
TRANSFER_FRAMES: Final = "frames"
TRANSFERS: Final = (TRANSFER_FD, TRANSFER_FRAMES)
EXPORT_FORMATS: Final = ("safetensors",)

#: Commands that change a database; only ``allowed_uids``/``allowed_gids`` may send them.
MUTATING_COMMANDS: Final = frozenset({"prune", "ingest", "forget"})

#: Frame length prefix: unsigned 32-bit, big-endian.
FRAME_HEADER: Final = struct.Struct(">I")
#: Length of the frame that ends a stream; the SHA-256 trailer follows it.
FRAME_END: Final = 0
#: Length that aborts a stream; one JSON error answer line follows it.
FRAME_ERROR: Final = 0xFFFFFFFF
#: The daemon never sends a longer payload; a reader may refuse one (it bounds its memory).
MAX_FRAME_BYTES: Final = 1 << 20
#: The trailer: the raw SHA-256 digest of every payload byte of the stream, in order.
TRAILER_BYTES: Final = 32

#: What an ``internal`` answer says instead of the exception text, which stays in the log.
INTERNAL_MESSAGE: Final = "internal error in the daemon; its log has the details"

_SHOWN_CHARS = 40  # how much of a hostile value an error message quotes


@dataclass(frozen=True, slots=True)
class Request:
    """One validated request. Fields a command does not take keep their defaults.

    ``round_num`` is None for "latest" (restore, export) or "let the file decide" (ingest).
    ``path`` is absolute (ingest). ``transfer`` says how restore/export bytes travel.
    """

    cmd: str
    client_id: str | None = None
    round_num: int | None = None
    dry_run: bool = False
    path: str | None = None
    transfer: str = TRANSFER_FRAMES
    export_format: str | None = None
    #: an earlier version of a rewritten round (restore); None: the current one
    generation: int | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """One decoded answer line: ``result`` when ``ok``, else ``code`` and ``message``."""

    ok: bool
    result: dict[str, object]
    code: str = ""
    message: str = ""


# -- field parsers: (where, value) -> value for the Request, or RequestError --------------------


def _short(value: object) -> str:
    """A value as an error message may quote it: its repr, cut to a few dozen characters."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 1] + "…"


def _json_type(value: object) -> str:
    names = {
        bool: "boolean",
        int: "number",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def _parse_client_id(where: str, value: object) -> str:
    if (
        not isinstance(value, str)
        or CLIENT_ID_PATTERN.fullmatch(value) is None
        or value in {".", ".."}
    ):
        raise RequestError(
            f"{where} must be 1 to 64 of A-Z a-z 0-9 _ . - and not '.' or '..', got {_short(value)}"
        )
    return value


def _parse_round(where: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_ROUND:
        raise RequestError(f"{where} must be an integer from 0 to 2**63-1, got {_short(value)}")
    return value


def _parse_round_or_latest(where: str, value: object) -> int | None:
    if value == LATEST:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_ROUND:
        raise RequestError(
            f'{where} must be an integer from 0 to 2**63-1 or "latest", got {_short(value)}'
        )
    return value


def _parse_bool(where: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise RequestError(f"{where} must be true or false, got {_json_type(value)}")
    return value


def _parse_absolute_path(where: str, value: object) -> str:
    if not isinstance(value, str):
        raise RequestError(f"{where} must be a string, got {_json_type(value)}")
    if not value.startswith("/"):
        raise RequestError(f"{where} must be an absolute path, got {_short(value)}")
    try:
        size = len(value.encode("utf-8", "surrogateescape"))  # what the filesystem will see
    except UnicodeEncodeError:
        size = -1
    if "\0" in value or not 0 < size <= MAX_PATH_BYTES:
        raise RequestError(f"{where} is not a usable path (NUL byte, bad text or too long)")
    return value


def _choice(*choices: str) -> Callable[[str, object], str]:
    def parse(where: str, value: object) -> str:
        if value not in choices:
            allowed = ", ".join(f'"{c}"' for c in choices)
            raise RequestError(f"{where} must be one of {allowed}, got {_short(value)}")
        assert isinstance(value, str)
        return value

    return parse


@dataclass(frozen=True, slots=True)
class _Field:
    attr: str  # the Request attribute it fills
    parse: Callable[[str, object], object]
    required: bool = False


_CLIENT_OPTIONAL = _Field("client_id", _parse_client_id)
_CLIENT_REQUIRED = _Field("client_id", _parse_client_id, required=True)
_TRANSFER = _Field("transfer", _choice(*TRANSFERS))

#: Every command and the JSON fields it takes (besides "cmd"); docs/PROTOCOL.md lists the same.
COMMAND_FIELDS: Final[Mapping[str, Mapping[str, _Field]]] = {
    "ping": {},
    "status": {},
    "list": {"client": _CLIENT_OPTIONAL},
    "verify": {"client": _CLIENT_OPTIONAL},
    "restore": {
        "client": _CLIENT_REQUIRED,
        "round": _Field("round_num", _parse_round_or_latest),
        "generation": _Field("generation", _parse_round),
        "transfer": _TRANSFER,
    },
    "export": {
        "client": _CLIENT_REQUIRED,
        "round": _Field("round_num", _parse_round_or_latest),
        "format": _Field("export_format", _choice(*EXPORT_FORMATS), required=True),
        "generation": _Field("generation", _parse_round),
        "transfer": _TRANSFER,
    },
    "prune": {"client": _CLIENT_OPTIONAL, "dry_run": _Field("dry_run", _parse_bool)},
    "forget": {
        "client": _CLIENT_REQUIRED,
        "round": _Field("round_num", _parse_round, required=True),
        "generation": _Field("generation", _parse_round),
        "dry_run": _Field("dry_run", _parse_bool),
    },
    "ingest": {
        "client": _CLIENT_REQUIRED,
        "path": _Field("path", _parse_absolute_path, required=True),
        "round": _Field("round_num", _parse_round),
    },
}

COMMANDS: Final = tuple(COMMAND_FIELDS)


# -- requests ------------------------------------------------------------------------------------


def _reject_constant(name: str) -> object:
    raise RequestError(f"request is not valid JSON: {name} is not a JSON number")


def _unique_object(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """An object without duplicate keys: "last one wins" would let a proxy and we disagree."""
    obj: dict[str, object] = {}
    for key, value in pairs:
        if key in obj:
            raise RequestError(f"request has the field {_short(key)} twice")
        obj[key] = value
    return obj


def decode_json_line(line: bytes, what: str) -> object:
    """Strict JSON from one line: UTF-8, no NaN/Infinity, no duplicate keys; else RequestError."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(f"{what} is not valid UTF-8 (bad byte at offset {e.start})") from None
    try:
        return json.loads(text, object_pairs_hook=_unique_object, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise RequestError(
            f"{what} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    except (ValueError, RecursionError) as e:  # an int over 4300 digits, nesting too deep
        raise RequestError(f"{what} is not valid JSON: {type(e).__name__}") from None


def parse_request(line: bytes) -> Request:
    """Validate one request line (without its newline) into a :class:`Request`.

    Raises RequestError (``bad_request``) or UnknownCommandError (``unknown_command``); never
    anything else, whatever the bytes.
    """
    if len(line) > MAX_LINE_BYTES:
        raise RequestError(f"request line is longer than {MAX_LINE_BYTES} bytes")
    obj = decode_json_line(line, "request")
    if not isinstance(obj, dict):
        raise RequestError(f"a request must be a JSON object, got {_json_type(obj)}")
    if "cmd" not in obj:
        raise RequestError('request has no "cmd" field')
    cmd = obj["cmd"]
    if not isinstance(cmd, str):
        raise RequestError(f'"cmd" must be a string, got {_json_type(cmd)}')
    fields = COMMAND_FIELDS.get(cmd)
    if fields is None:
        raise UnknownCommandError(f"unknown command {_short(cmd)}; commands: {', '.join(COMMANDS)}")
    for key in obj:
        if key != "cmd" and key not in fields:
            allowed = ", ".join(fields) or "none"
            raise RequestError(f"{cmd}: unknown field {_short(key)} (fields: {allowed})")
    values: dict[str, object] = {}
    for key, field in fields.items():
        value = obj.get(key)
        if value is None:  # absent or null: the default
            if field.required:
                raise RequestError(f'{cmd}: missing field "{key}"')
            continue
        values[field.attr] = field.parse(f'{cmd}: field "{key}"', value)
    return Request(cmd=cmd, **values)  # type: ignore[arg-type]  # each parser fits its field


def encode_request(cmd: str, **fields: object) -> bytes:
    """A request line for the CLI; None values are left out (the daemon's default applies)."""
    body = {"cmd": cmd, **{k: v for k, v in fields.items() if v is not None}}
    return _dump_line(body)


# -- answers -------------------------------------------------------------------------------------


def _json_default(obj: object) -> object:
    """Values a result commonly holds that JSON lacks: paths, datetimes, sets."""
    fspath = getattr(obj, "__fspath__", None)
    if callable(fspath):
        return fspath()
    isoformat = getattr(obj, "isoformat", None)
    if callable(isoformat):
        return isoformat()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _dump_line(obj: object) -> bytes:
    # allow_nan=False: NaN and Infinity are not JSON and `jq` and most clients reject them.
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False, default=_json_default)
    return text.encode("utf-8") + b"\n"


def encode_ok(result: Mapping[str, object]) -> bytes:
    """``{"ok": true, "result": {...}}`` as one line; ValueError/TypeError if it is not JSON."""
    return _dump_line({"ok": True, "result": dict(result)})


def describe_error(exc: BaseException) -> tuple[str, str]:
    """The ``(code, message)`` a client sees for ``exc``: internal errors say nothing inside."""
    if isinstance(exc, ChunkdError) and exc.code != "internal":
        return exc.code, str(exc)
    return "internal", INTERNAL_MESSAGE


def encode_error(exc: BaseException) -> bytes:
    """``{"ok": false, "error": {"code": ..., "message": ...}}`` as one line; never a traceback."""
    code, message = describe_error(exc)
    return _dump_line({"ok": False, "error": {"code": code, "message": message}})


def parse_answer(line: bytes) -> Answer:
    """Decode one answer line (the client's side).

    A malformed answer is the daemon's fault, not the caller's: it raises the base ChunkdError
    (``internal``), never RequestError, whose exit status would blame the command line.
    """
    try:
        obj = decode_json_line(line, "answer")
    except RequestError as e:
        raise ChunkdError(f"the daemon sent a malformed answer: {e}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("ok"), bool):
        raise ChunkdError('the daemon sent an answer without a boolean "ok"')
    if obj["ok"]:
        result = obj.get("result")
        if not isinstance(result, dict):
            raise ChunkdError('the daemon sent "ok": true without a "result" object')
        return Answer(True, result)
    error = obj.get("error")
    if (
        not isinstance(error, dict)
        or not isinstance(error.get("code"), str)
        or not isinstance(error.get("message"), str)
    ):
        raise ChunkdError('the daemon sent "ok": false without an error "code" and "message"')
    return Answer(False, {}, error["code"], error["message"])


# -- frames --------------------------------------------------------------------------------------


def encode_frame_header(length: int) -> bytes:
    """The 4-byte prefix of a payload frame (1..MAX_FRAME_BYTES), FRAME_END or FRAME_ERROR."""
    if not (0 <= length <= MAX_FRAME_BYTES or length == FRAME_ERROR):
        raise ValueError(f"frame length {length} out of range")
    return FRAME_HEADER.pack(length)


def decode_frame_header(header: bytes) -> int:
    """The length in a frame prefix; ChunkdError (the sender's fault) for one over the limit."""
    (length,) = FRAME_HEADER.unpack(header)
    if length > MAX_FRAME_BYTES and length != FRAME_ERROR:
        raise ChunkdError(f"frame of {length} bytes is over the {MAX_FRAME_BYTES}-byte limit")
    return int(length)
