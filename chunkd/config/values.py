"""Config values that are not tied to a key: sizes, durations, client ids, bounds.

Pure parsing of text into numbers, each error a :class:`~chunkd.errors.ConfigError` without the key
(the caller adds it).
"""

from __future__ import annotations

import math
import re
import reprlib
from fractions import Fraction

from chunkd.errors import ConfigError, RequestError

#: A client id (``[[clients]] id``, the ``{client}`` of ``db_path``): safe as a file name part.
CLIENT_ID_PATTERN: re.Pattern[str] = re.compile(r"[A-Za-z0-9_.-]{1,64}")


#: Bounds that keep the daemon's arithmetic and timers sane; docs/SPEC.md "Config (TOML)" has none.
MAX_CHUNK_NUM = 1_000_000


MIN_CHUNK_BYTES = 4096


MAX_CHUNK_BYTES = 1 << 30
#: Upper bound of ``delta_cache`` (a typo such as "64GiB" for "64MiB" is an error, not an OOM).
MAX_DELTA_CACHE_BYTES = 4 << 30


MAX_DURATION_S = 365 * 24 * 3600.0  # threading waits overflow far beyond this; a year is plenty


MAX_ID = 2**32 - 2  # the largest valid uid/gid; 2**32 - 1 is (uid_t)-1, "no id"


MAX_KEEP_ROUNDS = 2**63 - 1


MAX_SOCKET_PATH_BYTES = 107  # sizeof(sockaddr_un.sun_path) on Linux, minus the NUL


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


def check_client_id(client_id: str) -> None:
    """Raise RequestError unless ``client_id`` is safe to put in a path.

    Public so that client discovery can skip a directory whose id would fail later, with the same
    rule that ``[[clients]]`` ids are held to.
    """
    if CLIENT_ID_PATTERN.fullmatch(client_id) is None or client_id in {".", ".."}:
        raise RequestError(
            f"client id {client_id!r}: must be 1 to 64 of A-Z a-z 0-9 _ . - and not '.' or '..'"
        )


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


def _describe(value: object) -> str:
    """``string '10'``: the TOML type and value, for "got ..." in a wrong-type error."""
    type_name = _TOML_TYPE_NAMES.get(type(value), type(value).__name__)
    if isinstance(value, bool):
        return f"{type_name} {str(value).lower()}"
    return f"{type_name} {_value_repr.repr(value)}"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def split_host_port(text: str) -> tuple[str, int] | None:
    """``host:port`` or ``[v6]:port`` -> (host, port); None if it is neither."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)
