"""The TOML config file -> one frozen :class:`Settings` (SPEC.md, "Config (TOML)").

Everything the daemon and the CLI may be configured with is validated here, once, at start-up, so
that an invalid config stops the daemon with a message that names the file, the key and the
problem (``config /etc/chunkd/chunkd.toml: chunk_num: must be an integer >= 1, got 0``) instead
of failing later in a thread. Every error is a :class:`~chunkd.errors.ConfigError` (exit 78).

Attribute names are the TOML key names, except the three durations, which carry their unit:

    ================== ======================
    TOML key           Settings attribute
    ================== ======================
    retention_interval ``retention_interval_s``
    rescan_interval    ``rescan_interval_s``
    settle_delay       ``settle_delay_s``
    [[clients]]        ``clients`` (a tuple of :class:`ClientConfig`)
    ================== ======================

Which file: :func:`resolve_config_path` (``--config``, then ``$CHUNKD_CONFIG``, then
``/etc/chunkd/chunkd.toml`` if it exists, else none). With no file, :func:`load_settings` uses the
built-in defaults: SPEC's values (the table :data:`DEFAULTS`) except the two paths that need root
(``/srv/fl`` and ``/run/chunkd/chunkd.sock``), which :data:`EMBEDDED_DEFAULTS` moves into a data
home a normal user can write (``$CHUNKD_HOME``, else ``$XDG_DATA_HOME/chunkd``, else
``~/.local/share/chunkd``; see :func:`default_data_home`). A config file that leaves a key out gets
SPEC's value: the file describes a system install.

Relative paths (``watch_root``, ``socket``, ``db_path``, ``clients.dir``) are resolved against the
config file's directory, or the data home for the built-in defaults, so a config means the same
thing whatever the daemon's working directory. ``~`` is not expanded (a systemd service often has
no ``$HOME``): it is an error rather than a directory literally named ``~``. Nothing here touches
the paths themselves; creating directories and binding the socket belong to the daemon.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import reprlib
import string
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import MappingProxyType
from typing import NoReturn

from chunkd.errors import ConfigError, RequestError
from chunkd.rounds import DEFAULT_ROUND_REGEX

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: The system-wide config file, used when neither --config nor $CHUNKD_CONFIG names one.
SYSTEM_CONFIG_PATH = Path("/etc/chunkd/chunkd.toml")

#: A client id (``[[clients]] id``, the ``{client}`` of ``db_path``): safe as a file name part.
CLIENT_ID_PATTERN: re.Pattern[str] = re.compile(r"[A-Za-z0-9_.-]{1,64}")

#: Bounds that keep the daemon's arithmetic and timers sane; SPEC gives no number for them.
MAX_CHUNK_NUM = 1_000_000
MIN_CHUNK_BYTES = 4096
MAX_CHUNK_BYTES = 1 << 30
MAX_DURATION_S = 365 * 24 * 3600.0  # threading waits overflow far beyond this; a year is plenty
MAX_ID = 2**32 - 2  # the largest valid uid/gid; 2**32 - 1 is (uid_t)-1, "no id"
MAX_KEEP_ROUNDS = 2**63 - 1
MAX_SOCKET_PATH_BYTES = 107  # sizeof(sockaddr_un.sun_path) on Linux, minus the NUL

#: A config file is a few KiB; reading more than this means --config points at the wrong thing.
MAX_CONFIG_BYTES = 1 << 20

_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}
_DURATION_UNITS: dict[str, int] = {"ms": 1, "": 1000, "s": 1000, "m": 60_000, "h": 3_600_000}
_DURATION_UNITS["d"] = 24 * _DURATION_UNITS["h"]
_NUMBER_WITH_UNIT = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*", re.ASCII)
_MAX_NUMBER_CHARS = 40  # keeps int() clear of its 4300-digit limit and floats finite

_TOML_TYPE_NAMES: dict[type, str] = {
    bool: "boolean",
    int: "integer",
    float: "float",
    str: "string",
    list: "array",
    dict: "table",
}  # TOML's datetime, date and time are named by their Python class names already

_value_repr = reprlib.Repr()
_value_repr.maxstring = 80
_value_repr.maxother = 80
_value_repr.maxlist = 6
_value_repr.maxdict = 6


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """A client listed explicitly with ``[[clients]]``, beside those found under ``watch_root``."""

    id: str
    dir: Path


@dataclass(frozen=True, slots=True)
class ReplicaConfig:
    """The ``[replica]`` table (docs/REPLICA.md). Credentials are never here: boto3's standard
    chain (environment, ``~/.aws`` files, instance roles) supplies them."""

    url: str
    endpoint: str
    region: str
    host: str  # empty = the machine's host name, resolved by the daemon
    replica_keep_rounds: int  # 0 = as chunk_keep_rounds
    max_upload_rate: int  # bytes per second; 0 = unlimited
    prune_interval_s: float
    gc_grace_s: float


@dataclass(frozen=True, slots=True)
class Settings:
    """The validated configuration; every path in it is absolute.

    Values only: the daemon and the CLI read what they need and hand plain arguments to the engine
    (STYLE.md: engine functions never see Settings).
    """

    watch_root: Path
    client_dir_pattern: re.Pattern[str]
    file_patterns: tuple[str, ...]
    round_regex: re.Pattern[str]
    db_path: str
    socket: Path
    socket_group: str
    allowed_uids: tuple[int, ...]
    allowed_gids: tuple[int, ...]
    observer: str
    chunk_num: int
    max_chunk_bytes: int
    compression: str
    delta: bool
    chunk_keep_rounds: int
    retention_interval_s: float
    rescan_interval_s: float
    settle_delay_s: float
    delete_after_ingest: bool
    log_format: str
    log_level: str
    clients: tuple[ClientConfig, ...]
    #: ``[replica]``: off-host copies on S3-compatible storage; None when the table is absent.
    replica: ReplicaConfig | None = None

    def db_path_for(self, client_id: str, client_dir: Path) -> Path:
        """The database file of one client: ``db_path`` with ``{client}`` and ``{client_dir}``.

        ``db_path`` was validated at load time (only those two fields, absolute once filled in),
        so this cannot fail on the template. The id is checked here too, because it becomes part
        of a path: a directory matched by a loose ``client_dir_pattern`` could otherwise yield an
        id like ``..``. Raises RequestError for such an id.
        """
        check_client_id(client_id)
        return Path(self.db_path.format(client_dir=os.fspath(client_dir), client=client_id))


def check_client_id(client_id: str) -> None:
    """Raise RequestError unless ``client_id`` is safe to put in a path.

    Public so that client discovery can skip a directory whose id would fail later, with the same
    rule that ``[[clients]]`` ids are held to.
    """
    if CLIENT_ID_PATTERN.fullmatch(client_id) is None or client_id in {".", ".."}:
        raise RequestError(
            f"client id {client_id!r}: must be 1 to 64 of A-Z a-z 0-9 _ . - and not '.' or '..'"
        )


# -- sizes and durations -------------------------------------------------------------------------


def parse_size(value: str | int) -> int:
    """A byte count from ``"1MiB"``, ``"512KiB"``, ``"4MB"``, ``"1048576"`` or an int.

    Units are case-insensitive: ``B``, SI ``kB MB GB TB`` (powers of 1000) and IEC ``KiB MiB GiB
    TiB`` (powers of 1024). A fraction is allowed when it comes out as whole bytes (``"1.5KiB"``).
    Raises ConfigError (without a key; the caller adds it).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ConfigError(f"a size must not be negative, got {value}")
        return value
    expected = "expected a size such as '1MiB', '512KiB', '4MB' or 1048576"
    if not isinstance(value, str):
        raise ConfigError(f"{expected}, got {_describe(value)}")
    amount, unit = _split_number(value, expected)
    factor = _SIZE_UNITS.get(unit.lower())
    if factor is None:
        raise ConfigError(
            f"unknown size unit {unit!r} in {value!r}; use B, kB, MB, GB, TB, KiB, MiB, GiB, TiB"
        )
    size = amount * factor
    if size.denominator != 1:
        raise ConfigError(f"{value!r} is not a whole number of bytes")
    return int(size)


def parse_duration(value: str | float) -> float:
    """Seconds from ``"60s"``, ``"500ms"``, ``"5m"``, ``"1h"``, ``"1d"``, ``"1.5s"`` or a number.

    A bare number (TOML number or string) is seconds. Units are lowercase, so ``m`` is always
    minutes. The result is the float nearest the exact value (``"100ms"`` is ``0.1``). Raises
    ConfigError (without a key; the caller adds it).
    """
    expected = "expected a duration such as '60s', '500ms', '5m', '1h' or a number of seconds"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"a duration must be finite, got {value}")
        if value < 0:
            raise ConfigError(f"a duration must not be negative, got {value}")
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(f"duration {value} is too large") from None
    if not isinstance(value, str):
        raise ConfigError(f"{expected}, got {_describe(value)}")
    amount, unit = _split_number(value, expected)
    factor_ms = _DURATION_UNITS.get(unit)
    if factor_ms is None:
        raise ConfigError(f"unknown duration unit {unit!r} in {value!r}; use ms, s, m, h, d")
    return float(amount * factor_ms / 1000)


def _split_number(text: str, expected: str) -> tuple[Fraction, str]:
    """``"1.5 KiB"`` -> (Fraction(3, 2), "KiB"); exact, so unit arithmetic never rounds twice."""
    match = _NUMBER_WITH_UNIT.fullmatch(text)
    if match is None:
        raise ConfigError(f"{expected}, got {text!r}")
    number, unit = match.groups()
    if len(number) > _MAX_NUMBER_CHARS:
        raise ConfigError(f"number in {_value_repr.repr(text)} is too long")
    whole, _, frac = number.partition(".")
    amount = Fraction(int(whole or "0")) + Fraction(int(frac or "0"), 10 ** len(frac))
    return amount, unit


# -- the keys ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Context:
    """Where a mapping came from: named in every error, and the base of relative paths."""

    source: str
    base_dir: Path | None

    def fail(self, key: str, problem: str) -> NoReturn:
        raise ConfigError(f"config {self.source}: {key}: {problem}")


_Parser = Callable[[_Context, str, object], object]


@dataclass(frozen=True, slots=True)
class _Key:
    attr: str
    default: object  # as written in TOML; parsed like a user's value, so it cannot drift invalid
    parse: _Parser


def _describe(value: object) -> str:
    """``string '10'``: the TOML type and value, for "got ..." in a wrong-type error."""
    type_name = _TOML_TYPE_NAMES.get(type(value), type(value).__name__)
    if isinstance(value, bool):
        return f"{type_name} {str(value).lower()}"
    return f"{type_name} {_value_repr.repr(value)}"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_int(low: int, high: int) -> _Parser:
    def parse(ctx: _Context, key: str, value: object) -> int:
        if not _is_int(value):
            ctx.fail(key, f"must be an integer >= {low}, got {_describe(value)}")
        assert isinstance(value, int)
        if value < low:
            ctx.fail(key, f"must be an integer >= {low}, got {value}")
        if value > high:
            ctx.fail(key, f"must be an integer <= {high}, got {value}")
        return value

    return parse


def _parse_bool(ctx: _Context, key: str, value: object) -> bool:
    if not isinstance(value, bool):
        ctx.fail(key, f"must be true or false, got {_describe(value)}")
    return value


def _parse_choice(*choices: str) -> _Parser:
    listed = ", ".join(repr(c) for c in choices)

    def parse(ctx: _Context, key: str, value: object) -> str:
        if not isinstance(value, str):
            ctx.fail(key, f"must be one of {listed}, got {_describe(value)}")
        if value not in choices:
            ctx.fail(key, f"must be one of {listed}, got {value!r}")
        return value

    return parse


def _parse_string(ctx: _Context, key: str, value: object) -> str:
    if not isinstance(value, str):
        ctx.fail(key, f"must be a string, got {_describe(value)}")
    if "\0" in value:
        ctx.fail(key, "must not contain a NUL character")
    return value


def _check_path_text(ctx: _Context, key: str, value: object) -> str:
    if not isinstance(value, str):
        ctx.fail(key, f"must be a path string, got {_describe(value)}")
    if not value:
        ctx.fail(key, "must not be empty")
    if "\0" in value:
        ctx.fail(key, "must not contain a NUL character")
    if value.startswith("~"):
        ctx.fail(
            key,
            f"'~' is not expanded; give an absolute path or one relative to the config file's "
            f"directory, got {value!r}",
        )
    return value


def _base_dir(ctx: _Context, key: str, value: str) -> Path:
    if ctx.base_dir is None:
        ctx.fail(key, f"must be an absolute path (nothing to resolve it against), got {value!r}")
    return ctx.base_dir


def _parse_path(ctx: _Context, key: str, value: object) -> Path:
    text = _check_path_text(ctx, key, value)
    path = Path(text)
    return path if path.is_absolute() else _base_dir(ctx, key, text) / path


def _parse_socket(ctx: _Context, key: str, value: object) -> Path:
    path = _parse_path(ctx, key, value)
    length = len(os.fsencode(path))
    if length > MAX_SOCKET_PATH_BYTES:
        ctx.fail(
            key,
            f"{str(path)!r} is {length} bytes; a Unix socket path can have at most "
            f"{MAX_SOCKET_PATH_BYTES}",
        )
    return path


def _parse_regex(group: str) -> _Parser:
    def parse(ctx: _Context, key: str, value: object) -> re.Pattern[str]:
        if not isinstance(value, str):
            ctx.fail(key, f"must be a regular expression string, got {_describe(value)}")
        try:
            pattern = re.compile(value)
        except re.error as e:
            ctx.fail(key, f"is not a valid regular expression ({e}), got {value!r:.200}")
        except (OverflowError, RecursionError, MemoryError):
            ctx.fail(key, "is a regular expression too large or too deeply nested to compile")
        if group not in pattern.groupindex:
            ctx.fail(key, f"must contain a named group (?P<{group}>...), got {value!r}")
        return pattern

    return parse


def _parse_file_patterns(ctx: _Context, key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        ctx.fail(key, f"must be a non-empty array of glob strings, got {_describe(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            ctx.fail(f"{key}[{i}]", f"must be a non-empty glob string, got {_describe(item)}")
        if "/" in item or "\0" in item:
            ctx.fail(f"{key}[{i}]", f"is matched against base names, so no '/' or NUL: {item!r}")
    return tuple(value)


def _parse_ids(ctx: _Context, key: str, value: object) -> tuple[int, ...]:
    if not isinstance(value, list):
        ctx.fail(key, f"must be an array of integers, got {_describe(value)}")
    for i, item in enumerate(value):
        if not _is_int(item) or not 0 <= item <= MAX_ID:
            got = item if _is_int(item) else _describe(item)
            ctx.fail(f"{key}[{i}]", f"must be an integer from 0 to {MAX_ID}, got {got}")
    return tuple(value)


_DB_FIELDS = ("client_dir", "client")


def _parse_db_path(ctx: _Context, key: str, value: object) -> str:
    """Validate the template now, so :meth:`Settings.db_path_for` cannot fail on it later.

    Only bare ``{client_dir}`` and ``{client}`` are allowed: attribute or index access, conversions
    and format specs would let a config reach into objects, and nothing needs them. The result is
    made absolute by prefixing the base directory (braces escaped) to a relative template.
    """
    template = _check_path_text(ctx, key, value)
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        ctx.fail(key, f"is not a valid template ({e}), got {template!r}")
    fields: list[str] = []
    for literal, field, spec, conversion in parsed:
        if field is None:
            continue
        if field not in _DB_FIELDS or spec or conversion:
            shown = field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            ctx.fail(
                key,
                f"only {{client_dir}} and {{client}} are allowed (no conversion or format spec), "
                f"got {{{shown}}} in {template!r}",
            )
        if field == "client_dir" and (fields or literal):
            ctx.fail(
                key,
                f"{{client_dir}} is an absolute directory, so it can only start the template, "
                f"got {template!r}",
            )
        fields.append(field)
    if not fields:
        ctx.fail(
            key,
            f"must contain {{client}} or {{client_dir}} so that each client gets its own "
            f"database, got {template!r}",
        )
    if template.endswith("/"):
        ctx.fail(key, f"must name a file, not a directory, got {template!r}")
    if Path(template.format(client_dir="/", client="x")).is_absolute():
        return template
    base = os.fspath(_base_dir(ctx, key, template))
    return base.replace("{", "{{").replace("}", "}}").rstrip("/") + "/" + template


def _parse_max_chunk_bytes(ctx: _Context, key: str, value: object) -> int:
    try:
        size = parse_size(value)  # type: ignore[arg-type]  # parse_size checks the type itself
    except ConfigError as e:
        ctx.fail(key, str(e))
    if size < MIN_CHUNK_BYTES:
        ctx.fail(key, f"must be at least {MIN_CHUNK_BYTES} bytes (4KiB), got {value!r}")
    if size > MAX_CHUNK_BYTES:
        ctx.fail(key, f"must be at most {MAX_CHUNK_BYTES} bytes (1GiB), got {value!r}")
    return size


def _parse_duration_key(*, allow_zero: bool) -> _Parser:
    def parse(ctx: _Context, key: str, value: object) -> float:
        try:
            seconds = parse_duration(value)  # type: ignore[arg-type]  # checks the type itself
        except ConfigError as e:
            ctx.fail(key, str(e))
        if seconds == 0 and not allow_zero:
            ctx.fail(key, f"must be longer than 0s, got {value!r}")
        if seconds > MAX_DURATION_S:
            ctx.fail(key, f"must be at most 365 days, got {value!r}")
        return seconds

    return parse


_CLIENT_KEYS = ("id", "dir")


def _parse_clients(ctx: _Context, key: str, value: object) -> tuple[ClientConfig, ...]:
    if not isinstance(value, list):
        ctx.fail(key, f"must be an array of tables ([[clients]]), got {_describe(value)}")
    clients: list[ClientConfig] = []
    for i, entry in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(entry, dict):
            ctx.fail(where, f"must be a table with id and dir, got {_describe(entry)}")
        _check_known_keys(ctx, entry, _CLIENT_KEYS, prefix=f"{where}.")
        for name in _CLIENT_KEYS:
            if name not in entry:
                ctx.fail(f"{where}.{name}", "missing")
        client_id = entry["id"]
        if not isinstance(client_id, str):
            hint = f' (quote it: id = "{client_id}")' if _is_int(client_id) else ""
            ctx.fail(f"{where}.id", f"must be a string{hint}, got {_describe(client_id)}")
        try:
            check_client_id(client_id)
        except RequestError:
            ctx.fail(
                f"{where}.id",
                f"must be 1 to 64 of A-Z a-z 0-9 _ . - and not '.' or '..', got {client_id!r}",
            )
        client_dir = _parse_path(ctx, f"{where}.dir", entry["dir"])
        for j, other in enumerate(clients):
            if other.id == client_id:
                ctx.fail(f"{where}.id", f"duplicate id {client_id!r} (also {key}[{j}])")
            if other.dir == client_dir:
                ctx.fail(
                    f"{where}.dir",
                    f"{str(client_dir)!r} already belongs to {key}[{j}] (id {other.id!r})",
                )
        clients.append(ClientConfig(id=client_id, dir=client_dir))
    return tuple(clients)


# -- [replica] (docs/REPLICA.md) -----------------------------------------------------------------
_REPLICA_URL = re.compile(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\0]*)?")
_REPLICA_HOST = re.compile(r"[A-Za-z0-9_.-]{0,128}")
_REPLICA_SECRETS = ("access_key", "secret_key", "aws_access_key_id", "aws_secret_access_key")


def _parse_replica(ctx: _Context, key: str, value: object) -> ReplicaConfig | None:
    if not isinstance(value, dict):
        ctx.fail(key, f"must be a table ([replica]), got {_describe(value)}")
    for name in value:
        if name in _REPLICA_SECRETS or "secret" in name or "password" in name:
            ctx.fail(
                f"{key}.{name}",
                "credentials never go in the config file; use the environment, ~/.aws or an "
                "instance role",
            )
    known = (
        "url", "endpoint", "region", "host", "replica_keep_rounds", "max_upload_rate",
        "prune_interval", "gc_grace",
    )  # fmt: skip
    _check_known_keys(ctx, value, known, prefix=f"{key}.")
    if not value:
        return None
    if "url" not in value:
        ctx.fail(f"{key}.url", "missing (s3://bucket/prefix)")
    url = _parse_string(ctx, f"{key}.url", value["url"])
    segments = url[len("s3://") :].rstrip("/").split("/")[1:]
    if _REPLICA_URL.fullmatch(url) is None or any(p in ("", ".", "..") for p in segments):
        ctx.fail(f"{key}.url", f"must look like s3://bucket/prefix, got {url!r}")
    endpoint = _parse_string(ctx, f"{key}.endpoint", value.get("endpoint", ""))
    if endpoint and not re.fullmatch(r"https?://[^\s/]+/?", endpoint):
        ctx.fail(f"{key}.endpoint", f"must be http(s)://host[:port], got {endpoint!r}")
    host = _parse_string(ctx, f"{key}.host", value.get("host", ""))
    if _REPLICA_HOST.fullmatch(host) is None or host in (".", ".."):
        ctx.fail(f"{key}.host", f"must be 0 to 128 of A-Z a-z 0-9 _ . -, got {host!r}")
    try:
        rate = parse_size(value.get("max_upload_rate", 0))  # type: ignore[arg-type]
    except ConfigError as e:
        ctx.fail(f"{key}.max_upload_rate", f"{e} (bytes per second; 0 = unlimited)")
    duration = _parse_duration_key(allow_zero=True)
    return ReplicaConfig(
        url=url.rstrip("/"),
        endpoint=endpoint.rstrip("/"),
        region=_parse_string(ctx, f"{key}.region", value.get("region", "")),
        host=host,
        replica_keep_rounds=_parse_int(0, MAX_KEEP_ROUNDS)(
            ctx, f"{key}.replica_keep_rounds", value.get("replica_keep_rounds", 0)
        ),
        max_upload_rate=rate,
        prune_interval_s=duration(ctx, f"{key}.prune_interval", value.get("prune_interval", "1h")),
        gc_grace_s=duration(ctx, f"{key}.gc_grace", value.get("gc_grace", "1h")),
    )


#: Every TOML key: its Settings attribute, its SPEC.md default (as TOML would spell it), its parser.
_KEYS: dict[str, _Key] = {
    "watch_root": _Key("watch_root", "/srv/fl", _parse_path),
    "client_dir_pattern": _Key(
        "client_dir_pattern", "client_(?P<client>[A-Za-z0-9_.-]+)", _parse_regex("client")
    ),
    "file_patterns": _Key("file_patterns", ["*.pth", "*.pt"], _parse_file_patterns),
    "round_regex": _Key("round_regex", DEFAULT_ROUND_REGEX, _parse_regex("round")),
    "db_path": _Key("db_path", "{client_dir}/client_{client}_chunks.db", _parse_db_path),
    "socket": _Key("socket", "/run/chunkd/chunkd.sock", _parse_socket),
    "socket_group": _Key("socket_group", "", _parse_string),
    "allowed_uids": _Key("allowed_uids", [], _parse_ids),
    "allowed_gids": _Key("allowed_gids", [], _parse_ids),
    "observer": _Key("observer", "auto", _parse_choice("auto", "inotify", "polling")),
    "chunk_num": _Key("chunk_num", 10, _parse_int(1, MAX_CHUNK_NUM)),
    "max_chunk_bytes": _Key("max_chunk_bytes", "1MiB", _parse_max_chunk_bytes),
    "compression": _Key("compression", "none", _parse_choice("none", "auto", "max")),
    "delta": _Key("delta", False, _parse_bool),
    "chunk_keep_rounds": _Key("chunk_keep_rounds", 5, _parse_int(0, MAX_KEEP_ROUNDS)),
    "retention_interval": _Key(
        "retention_interval_s", "60s", _parse_duration_key(allow_zero=False)
    ),
    "rescan_interval": _Key("rescan_interval_s", "300s", _parse_duration_key(allow_zero=False)),
    "settle_delay": _Key("settle_delay_s", "1s", _parse_duration_key(allow_zero=True)),
    "delete_after_ingest": _Key("delete_after_ingest", False, _parse_bool),
    "log_format": _Key("log_format", "auto", _parse_choice("json", "console", "auto")),
    "log_level": _Key("log_level", "info", _parse_choice("debug", "info", "warning", "error")),
    "clients": _Key("clients", [], _parse_clients),
    "replica": _Key("replica", {}, _parse_replica),
}

#: SPEC.md's default for every key, as TOML values: what a config file gets for a key it omits.
DEFAULTS: Mapping[str, object] = MappingProxyType({k: v.default for k, v in _KEYS.items()})

#: The built-in configuration used with no config file: DEFAULTS with the two root-only paths
#: replaced by paths relative to :func:`default_data_home`, so ``chunkd serve`` runs as a user.
EMBEDDED_DEFAULTS: Mapping[str, object] = MappingProxyType(
    {"watch_root": "fl", "socket": "chunkd.sock"}
)


def _check_known_keys(
    ctx: _Context, data: Mapping[str, object], known: tuple[str, ...], *, prefix: str = ""
) -> None:
    for name in data:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            ctx.fail(f"{prefix}{name}", f"unknown key{hint}")


def settings_from_mapping(
    data: Mapping[str, object], *, source: str, base_dir: Path | None = None
) -> Settings:
    """Validate a parsed TOML document into Settings; missing keys get :data:`DEFAULTS`.

    ``source`` names the document in errors (a path, or "built-in defaults"). ``base_dir`` is the
    absolute directory relative paths are resolved against; with None, a relative path is an
    error. Pure: no file or environment access, so tests can feed it any mapping.
    """
    ctx = _Context(source=source, base_dir=base_dir)
    _check_known_keys(ctx, data, tuple(_KEYS))
    values = {
        spec.attr: spec.parse(ctx, key, data.get(key, spec.default)) for key, spec in _KEYS.items()
    }
    return Settings(**values)  # type: ignore[arg-type]  # each parser returns its field's type


def default_data_home() -> Path:
    """The directory of the built-in defaults: ``$CHUNKD_HOME``, ``$XDG_DATA_HOME/chunkd``, or
    ``~/.local/share/chunkd``.

    ``$XDG_DATA_HOME`` is ignored unless absolute, as the XDG spec says. Nothing is created here;
    ``chunkd serve`` creates the directories it needs.
    """
    home = os.environ.get("CHUNKD_HOME")
    if home:
        return Path(home).absolute()
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "chunkd"
    try:
        return Path.home() / ".local" / "share" / "chunkd"
    except RuntimeError:
        raise ConfigError(
            "config built-in defaults: no home directory; set CHUNKD_HOME or give --config"
        ) from None


def resolve_config_path(cli_value: str | None) -> Path | None:
    """Which config file to load: ``--config``, ``$CHUNKD_CONFIG``, the system file, or None.

    None means the built-in defaults. An empty ``$CHUNKD_CONFIG`` counts as unset (a common way to
    clear a variable); an empty ``--config`` is a mistake. A system file that exists but cannot be
    examined is still returned, so loading it reports the permission problem instead of silently
    talking to a different socket under the built-in defaults.
    """
    if cli_value is not None:
        if not cli_value:
            raise ConfigError("config: --config: must not be empty")
        return Path(cli_value)
    env_value = os.environ.get("CHUNKD_CONFIG")
    if env_value:
        return Path(env_value)
    try:
        exists = SYSTEM_CONFIG_PATH.exists()
    except OSError:
        exists = True
    return SYSTEM_CONFIG_PATH if exists else None


def load_settings(path: str | Path | None) -> Settings:
    """Read and validate a config file, or the built-in defaults when ``path`` is None.

    A file given explicitly must exist. Relative paths inside it are resolved against its
    directory. Raises ConfigError naming the file (and, for a TOML syntax error, the line).
    """
    if path is None:
        return settings_from_mapping(
            EMBEDDED_DEFAULTS, source="built-in defaults", base_dir=default_data_home()
        )
    config_path = Path(path)
    data = _read_toml(config_path)
    return settings_from_mapping(
        data, source=str(config_path), base_dir=config_path.absolute().parent
    )


_TOML_POSITION = re.compile(r"\s*\(at (line \d+, column \d+|end of document)\)\Z")


def _read_toml(path: Path) -> dict[str, object]:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"config {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"config {path}: is a directory, not a config file") from None
    except OSError as e:
        raise ConfigError(f"config {path}: cannot read: {e.strerror or e}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config {path}: larger than {MAX_CONFIG_BYTES} bytes; not a config file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"config {path}: line {line}: not UTF-8 text") from None
    try:
        return tomllib.loads(text)
    except (RecursionError, MemoryError):
        raise ConfigError(f"config {path}: nested too deeply to be a config file") from None
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        match = _TOML_POSITION.search(message)
        if match is None:  # pragma: no cover - tomllib always says where
            where = "somewhere"
        elif match.group(1) == "end of document":
            where = f"line {text.count(chr(10)) + 1} (end of file)"
        else:
            where = match.group(1)
        problem = message[: match.start()] if match else message
        raise ConfigError(f"config {path}: {where}: invalid TOML: {problem}") from None
