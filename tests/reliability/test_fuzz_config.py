"""Fuzzing the config parser: any file gives :class:`Settings` or a :class:`ConfigError`.

Three generators: documents of chunkd's keys (and unknown ones) with values of every TOML type,
including hostile sizes, durations, regular expressions, templates and ``[[clients]]`` tables;
raw text; and byte mutations of the documented example ``config/chunkd.toml``. Each document is
written to a file and loaded with :func:`chunkd.config.load_settings`, as ``chunkd serve``
does. A ConfigError must name the file; Settings must be usable (absolute paths, a socket path
that fits, a ``db_path`` that formats). A sample of the invalid documents goes through the real
``chunkd serve``, which must exit 78 with one line naming the problem.

``test_pathological_configs_are_config_errors`` pins down three documents that once escaped as
OverflowError/RecursionError (exit 1, "internal error") instead of a ConfigError.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chunkd.config import DEFAULTS, Settings, load_settings
from chunkd.errors import ConfigError

from .conftest import run_cli

pytestmark = pytest.mark.torture

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "chunkd.toml"
KEYS = sorted(DEFAULTS)

sizes = st.sampled_from(
    ["1MiB", "4096", "1.5KiB", "0.1B", "9" * 45 + "GiB", "1 MiB", "1e3", "-1KiB", "1PiB", "KiB"]
) | st.from_regex(r"\A\s?[0-9]{0,12}(\.[0-9]{0,6})?\s?[A-Za-z]{0,3}\s?\Z")
durations = st.sampled_from(
    ["60s", "500ms", "0", "0s", "1d", "400d", "1.5m", "-1s", "1e3s", "NaNs", "s", "1h30m"]
) | st.from_regex(r"\A\s?[0-9]{0,10}(\.[0-9]{0,4})?\s?[a-z]{0,2}\s?\Z")
regexes = st.sampled_from(
    [
        "client_(?P<client>[A-Za-z0-9_.-]+)",
        "(?P<client>.*)",
        "(?P<client>..)",
        "(?P<round>\\d+)",
        "(?P<round>\\d+",
        "(?P<client>)",
        "(?P<client>a)(?P<client>b)",
        "[",
        "(?P<round>(a+)+$)",
    ]
) | st.text(alphabet="()[]{}*+?|^$\\.:P<>!=,-_aclientround0123456789", max_size=40)
paths = st.sampled_from(
    ["/srv/fl", "relative/dir", "", "~", "~/x", "/", "/tmp/x\u0000y", "a" * 200, "/" + "b" * 300]
) | st.text(max_size=30)
templates = st.sampled_from(
    [
        "{client_dir}/client_{client}_chunks.db",
        "{client}.db",
        "/var/lib/chunkd/{client}.db",
        "{client_dir}",
        "x/{client_dir}/{client}",
        "{client!r}.db",
        "{client:>10}.db",
        "{client.__class__}.db",
        "{0}.db",
        "{",
        "}",
        "{{client}}",
        "db/",
        "plain.db",
    ]
) | st.text(alphabet="{}!:.client_dir/x0", max_size=30)

scalars = (
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31))
)
any_value = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(min_size=1, max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)

#: For each key, values that reach its validation (plus anything at all).
BY_KEY: dict[str, st.SearchStrategy[Any]] = {
    "watch_root": paths,
    "socket": paths,
    "db_path": templates,
    "client_dir_pattern": regexes,
    "round_regex": regexes,
    "max_chunk_bytes": sizes | st.integers(min_value=-(2**63), max_value=2**63 - 1),
    "retention_interval": durations | st.floats(),
    "rescan_interval": durations | st.floats(),
    "settle_delay": durations | st.floats(),
    "chunk_num": st.integers(min_value=-10, max_value=2**63 - 1),
    "chunk_keep_rounds": st.integers(min_value=-(2**63), max_value=2**63 - 1),
    "file_patterns": st.lists(st.text(max_size=8), max_size=4),
    "allowed_uids": st.lists(st.integers(min_value=-1, max_value=2**33), max_size=3),
    "allowed_gids": st.lists(st.integers(min_value=-1, max_value=2**33), max_size=3),
    "clients": st.lists(
        st.fixed_dictionaries(
            {"id": st.text(max_size=70) | st.integers(), "dir": paths},
            optional={"extra": scalars},
        ),
        max_size=3,
    ),
}


def toml_value(value: Any) -> str:
    """A TOML spelling of ``value`` (inline tables and arrays for containers)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items())
        return "{" + inner + "}"
    raise TypeError(type(value))


@st.composite
def documents(draw: st.DrawFn) -> str:
    lines = []
    chosen = draw(st.lists(st.sampled_from(KEYS) | st.text(min_size=1, max_size=12), max_size=6))
    for key in dict.fromkeys(chosen):
        strategy = BY_KEY.get(key, any_value)
        value = draw(strategy | any_value) if draw(st.integers(0, 4)) == 0 else draw(strategy)
        tables = isinstance(value, list) and value and all(isinstance(t, dict) for t in value)
        if key == "clients" and tables and draw(st.booleans()):
            for table in value:  # as [[clients]] tables
                lines.append("[[clients]]")
                lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in table.items()]
            continue
        lines.insert(0, f"{json.dumps(key)} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


def mutated_example(rng: random.Random) -> bytes:
    data = bytearray(EXAMPLE.read_bytes())
    for _ in range(rng.randint(1, 6)):
        at = rng.randrange(len(data))
        op = rng.randrange(3)
        if op == 0:
            data[at] = rng.randrange(256)
        elif op == 1:
            del data[at : at + rng.randint(1, 20)]
        else:
            data[at:at] = rng.choice([b"=", b"[", b"]", b'"', b"\n", b"{", b"'''", b"\\u"])
    return bytes(data)


def classify(path: Path, outcomes: Counter[str], invalid: list[Path]) -> None:
    try:
        result = load_settings(path)
    except ConfigError as e:
        assert str(e).startswith(f"config {path}"), f"error does not name the file: {e}"
        outcomes["ConfigError"] += 1
        invalid.append(path)
        return
    assert isinstance(result, Settings)
    assert result.watch_root.is_absolute() and result.socket.is_absolute()
    assert len(str(result.socket).encode()) <= 107
    assert Path(result.db_path_for("client-1", Path("/srv/fl/client_1"))).is_absolute()
    outcomes["Settings"] += 1


def test_random_configs_give_settings_or_config_error(tmp_path, torture, figures):
    cases = 5000 if torture else 400
    outcomes: Counter[str] = Counter()
    invalid: list[Path] = []
    counter = iter(range(10**9))
    started = time.monotonic()

    def write(text: str | bytes) -> Path:
        path = tmp_path / f"c{next(counter)}.toml"
        path.write_bytes(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
        return path

    @settings(
        max_examples=cases, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(documents())
    def structured(text: str) -> None:
        classify(write(text), outcomes, invalid)

    @settings(
        max_examples=cases // 4,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.text(max_size=300) | st.binary(max_size=300))
    def raw(text: str | bytes) -> None:
        classify(write(text), outcomes, invalid)

    structured()
    raw()
    rng = random.Random(6)
    for _ in range(cases // 4):
        classify(write(mutated_example(rng)), outcomes, invalid)

    # the daemon itself refuses a sample of the invalid ones: exit 78, one line, the file named
    sample = random.Random(7).sample(invalid, min(len(invalid), 40 if torture else 8))
    exits: Counter[int] = Counter()
    for path in sample:
        done = run_cli("serve", "--config", str(path), timeout_s=60)
        exits[done.returncode] += 1
        stderr = done.stderr.decode()
        assert done.returncode == 78, (path.read_bytes()[:300], stderr)
        assert stderr.count("\n") == 1 and str(path) in stderr, stderr
    figures.update(
        cases=sum(outcomes.values()),
        outcomes=dict(outcomes),
        serve_exit_codes=dict(exits),
        duration_s=round(time.monotonic() - started, 1),
    )
    figures.save()
    assert outcomes["Settings"] and outcomes["ConfigError"]


@pytest.mark.parametrize(
    "document",
    [
        'client_dir_pattern = "(?P<client>a{4294967296})"\n',
        'round_regex = "(?P<round>' + "(" * 1200 + ")" * 1200 + ')"\n',
        "chunk_num = " + "[" * 2000 + "]" * 2000 + "\n",
    ],
    ids=["regex-repeat-overflow", "regex-deep-nesting", "toml-deep-nesting"],
)
def test_pathological_configs_are_config_errors(tmp_path, document):
    """Regression (found by this campaign): OverflowError/RecursionError from ``re.compile`` and
    ``tomllib`` escaped config.py, so ``chunkd serve`` exited 1 with "internal error"."""
    path = tmp_path / "chunkd.toml"
    path.write_text(document)
    done = run_cli("serve", "--config", str(path), timeout_s=60)
    assert done.returncode == 78, done.stderr.decode()
    assert b"internal error" not in done.stderr
