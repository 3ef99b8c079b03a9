"""The TOML config file -> one frozen :class:`Settings` (docs/SPEC.md, "Config (TOML)").

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
built-in defaults: docs/SPEC.md "Config (TOML)" values (the table :data:`DEFAULTS`) except the
two paths that need root
(``/srv/fl`` and ``/run/chunkd/chunkd.sock``), which :data:`EMBEDDED_DEFAULTS` moves into a data
home a normal user can write (``$CHUNKD_HOME``, else ``$XDG_DATA_HOME/chunkd``, else
``~/.local/share/chunkd``; see :func:`default_data_home`). A config file that leaves a key out gets
the value docs/SPEC.md ("Config (TOML)") gives it: the file describes a system install.

Relative paths (``watch_root``, ``socket``, ``db_path``, ``clients.dir``) are resolved against the
config file's directory, or the data home for the built-in defaults, so a config means the same
thing whatever the daemon's working directory. ``~`` is not expanded (a systemd service often has
no ``$HOME``): it is an error rather than a directory literally named ``~``. Nothing here touches
the paths themselves; creating directories and binding the socket belong to the daemon, which
creates ``watch_root`` only under the built-in defaults (``Settings.create_watch_root``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from chunkd.errors import ConfigError
from chunkd.rounds import DEFAULT_ROUND_REGEX

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from chunkd.config.keys import (
    _check_known_keys,
    _Context,
    _Key,
    _parse_bool,
    _parse_choice,
    _parse_clients,
    _parse_db_path,
    _parse_delta_cache,
    _parse_duration_key,
    _parse_file_patterns,
    _parse_ids,
    _parse_int,
    _parse_max_chunk_bytes,
    _parse_metrics_addr,
    _parse_metrics_textfile,
    _parse_path,
    _parse_regex,
    _parse_socket,
    _parse_string,
)
from chunkd.config.model import ClientConfig, ReplicaConfig, Settings
from chunkd.config.replica import _parse_replica
from chunkd.config.values import (
    CLIENT_ID_PATTERN,
    MAX_CHUNK_BYTES,
    MAX_CHUNK_NUM,
    MAX_DURATION_S,
    MAX_ID,
    MAX_KEEP_ROUNDS,
    MAX_SOCKET_PATH_BYTES,
    MIN_CHUNK_BYTES,
    check_client_id,
    parse_duration,
    parse_size,
)

#: The system-wide config file, used when neither --config nor $CHUNKD_CONFIG names one.
SYSTEM_CONFIG_PATH = Path("/etc/chunkd/chunkd.toml")


#: A config file is a few KiB; reading more than this means --config points at the wrong thing.
MAX_CONFIG_BYTES = 1 << 20


#: Every TOML key: its Settings attribute, its default (docs/SPEC.md, "Config (TOML)"), its parser.
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
    "compression": _Key("compression", "auto", _parse_choice("none", "auto", "max")),
    "delta": _Key("delta", True, _parse_bool),
    "delta_cache": _Key("delta_cache_bytes", "64MiB", _parse_delta_cache),
    "chunk_keep_rounds": _Key("chunk_keep_rounds", 5, _parse_int(0, MAX_KEEP_ROUNDS)),
    "retention_interval": _Key(
        "retention_interval_s", "60s", _parse_duration_key(allow_zero=False)
    ),
    "rescan_interval": _Key("rescan_interval_s", "300s", _parse_duration_key(allow_zero=False)),
    "settle_delay": _Key("settle_delay_s", "1s", _parse_duration_key(allow_zero=True)),
    "delete_after_ingest": _Key("delete_after_ingest", False, _parse_bool),
    "log_format": _Key("log_format", "auto", _parse_choice("json", "console", "auto")),
    "log_level": _Key("log_level", "info", _parse_choice("debug", "info", "warning", "error")),
    # Prometheus metrics (README "Metrics"), off unless one of the first two is set
    "metrics_addr": _Key("metrics_addr", "", _parse_metrics_addr),
    "metrics_textfile": _Key("metrics_textfile", "", _parse_metrics_textfile),
    "metrics_client_labels": _Key("metrics_client_labels", 100, _parse_int(0, 100_000)),
    "clients": _Key("clients", [], _parse_clients),
    "replica": _Key("replica", {}, _parse_replica),
}


#: The default of every key (docs/SPEC.md, "Config (TOML)"), as TOML values: what a config
#: file gets for a key it omits.
DEFAULTS: Mapping[str, object] = MappingProxyType({k: v.default for k, v in _KEYS.items()})


#: The built-in configuration used with no config file: DEFAULTS with the two root-only paths
#: replaced by paths relative to :func:`default_data_home`, so ``chunkd serve`` runs as a user.
EMBEDDED_DEFAULTS: Mapping[str, object] = MappingProxyType(
    {"watch_root": "fl", "socket": "chunkd.sock"}
)


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
        embedded = settings_from_mapping(
            EMBEDDED_DEFAULTS, source="built-in defaults", base_dir=default_data_home()
        )
        return dataclasses.replace(embedded, create_watch_root=True)
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


__all__ = [
    "CLIENT_ID_PATTERN",
    "DEFAULTS",
    "EMBEDDED_DEFAULTS",
    "MAX_CHUNK_BYTES",
    "MAX_CHUNK_NUM",
    "MAX_CONFIG_BYTES",
    "MAX_DURATION_S",
    "MAX_ID",
    "MAX_KEEP_ROUNDS",
    "MAX_SOCKET_PATH_BYTES",
    "MIN_CHUNK_BYTES",
    "SYSTEM_CONFIG_PATH",
    "ClientConfig",
    "ReplicaConfig",
    "Settings",
    "check_client_id",
    "default_data_home",
    "load_settings",
    "parse_duration",
    "parse_size",
    "resolve_config_path",
    "settings_from_mapping",
]
