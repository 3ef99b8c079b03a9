"""The parsers of the config keys: each takes ``(context, key, value)`` and returns the Settings
value or fails with the file and the key named."""

from __future__ import annotations

import difflib
import os
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from chunkd.config.model import ClientConfig
from chunkd.config.values import (
    MAX_CHUNK_BYTES,
    MAX_DELTA_CACHE_BYTES,
    MAX_DURATION_S,
    MAX_ID,
    MAX_SOCKET_PATH_BYTES,
    MIN_CHUNK_BYTES,
    _describe,
    _is_int,
    check_client_id,
    parse_duration,
    parse_size,
    split_host_port,
)
from chunkd.errors import ConfigError, RequestError


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


def _parse_metrics_addr(ctx: _Context, key: str, value: object) -> str:
    text = _parse_string(ctx, key, value).strip()
    if text and split_host_port(text) is None:
        ctx.fail(key, f'{text!r} is not host:port (e.g. "127.0.0.1:9464" or "[::1]:9464")')
    return text


def _parse_metrics_textfile(ctx: _Context, key: str, value: object) -> str:
    """A ``.prom`` file (node_exporter's textfile collector reads no other), or empty."""
    if value == "":
        return ""
    path = _parse_path(ctx, key, value)
    if path.suffix != ".prom":
        ctx.fail(key, f"{str(path)!r} must end in .prom (node_exporter reads only those)")
    return str(path)


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


def _parse_delta_cache(ctx: _Context, key: str, value: object) -> int:
    try:
        size = parse_size(value)  # type: ignore[arg-type]  # parse_size checks the type itself
    except ConfigError as e:
        ctx.fail(key, str(e))
    if size > MAX_DELTA_CACHE_BYTES:
        ctx.fail(key, f"must be at most {MAX_DELTA_CACHE_BYTES} bytes (4GiB), got {value!r}")
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


def _check_known_keys(
    ctx: _Context, data: Mapping[str, object], known: tuple[str, ...], *, prefix: str = ""
) -> None:
    for name in data:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            ctx.fail(f"{prefix}{name}", f"unknown key{hint}")
