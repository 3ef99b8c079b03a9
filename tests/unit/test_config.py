"""The config file: defaults, every key's validation, paths, and which file is read."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chunkd import config
from chunkd.config import (
    DEFAULTS,
    EMBEDDED_DEFAULTS,
    ClientConfig,
    Settings,
    check_client_id,
    default_data_home,
    load_settings,
    parse_duration,
    parse_size,
    resolve_config_path,
    settings_from_mapping,
)
from chunkd.errors import ConfigError, RequestError
from chunkd.rounds import DEFAULT_ROUND_REGEX

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "chunkd.toml"
SOURCE = "t.toml"
BASE = Path("/etc/chunkd")


def settings(**data: object) -> Settings:
    return settings_from_mapping(data, source=SOURCE, base_dir=BASE)


def config_error(data: dict[str, object]) -> str:
    with pytest.raises(ConfigError) as info:
        settings_from_mapping(data, source=SOURCE, base_dir=BASE)
    return str(info.value)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No config or data-home variables, a private HOME, and no system config file."""
    for name in ("CHUNKD_CONFIG", "CHUNKD_HOME", "XDG_DATA_HOME"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(config, "SYSTEM_CONFIG_PATH", tmp_path / "etc" / "chunkd.toml")
    return home


# -- defaults ------------------------------------------------------------------------------------


def test_spec_defaults() -> None:
    s = settings_from_mapping({}, source=SOURCE)
    assert s.watch_root == Path("/srv/fl")
    assert s.client_dir_pattern.pattern == "client_(?P<client>[A-Za-z0-9_.-]+)"
    assert s.file_patterns == ("*.pth", "*.pt")
    assert s.round_regex.pattern == DEFAULT_ROUND_REGEX
    assert s.db_path == "{client_dir}/client_{client}_chunks.db"
    assert s.socket == Path("/run/chunkd/chunkd.sock")
    assert s.socket_group == ""
    assert s.allowed_uids == ()
    assert s.allowed_gids == ()
    assert s.observer == "auto"
    assert s.chunk_num == 10
    assert s.max_chunk_bytes == 1 << 20
    assert s.compression == "auto"  # SPEC: out of the box chunkd compresses and delta-codes
    assert s.delta is True
    assert s.delta_cache_bytes == 64 << 20
    assert s.chunk_keep_rounds == 5
    assert s.retention_interval_s == 60.0
    assert s.rescan_interval_s == 300.0
    assert s.settle_delay_s == 1.0
    assert s.delete_after_ingest is False
    assert s.log_format == "auto"
    assert s.log_level == "info"
    assert s.clients == ()


def test_defaults_table_covers_every_setting() -> None:
    renamed = {
        "retention_interval": "retention_interval_s",
        "rescan_interval": "rescan_interval_s",
        "settle_delay": "settle_delay_s",
        "delta_cache": "delta_cache_bytes",
    }
    attrs = {renamed.get(key, key) for key in DEFAULTS}
    # not a key: set by load_settings for the built-in defaults only (issue 21)
    not_keys = {"create_watch_root"}
    assert attrs == {f.name for f in dataclasses.fields(Settings)} - not_keys


@pytest.mark.parametrize(("value", "expected"), [("0", 0), ("16MiB", 16 << 20), (1 << 30, 1 << 30)])
def test_delta_cache_is_a_size(value: object, expected: int) -> None:
    assert (
        settings_from_mapping({"delta_cache": value}, source=SOURCE).delta_cache_bytes == expected
    )


@pytest.mark.parametrize("value", ["64GiB", "-1", "lots", True])
def test_delta_cache_out_of_range_is_refused(value: object) -> None:
    with pytest.raises(ConfigError, match="delta_cache"):
        settings_from_mapping({"delta_cache": value}, source=SOURCE)


def test_settings_are_frozen_and_slotted() -> None:
    s = settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.chunk_num = 3  # type: ignore[misc]
    assert not hasattr(s, "__dict__")
    assert hash(s) == hash(settings())


def test_embedded_defaults_use_chunkd_home(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CHUNKD_HOME", str(tmp_path / "ch"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    s = load_settings(None)
    assert s.watch_root == tmp_path / "ch" / "fl"
    assert s.socket == tmp_path / "ch" / "chunkd.sock"
    # everything else is SPEC's
    assert dataclasses.replace(
        s, watch_root=Path("/srv/fl"), socket=Path("/run/chunkd/chunkd.sock")
    ) == (settings_from_mapping({}, source="x"))


def test_embedded_defaults_use_xdg_data_home(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    s = load_settings(None)
    assert s.watch_root == tmp_path / "xdg" / "chunkd" / "fl"
    assert s.socket == tmp_path / "xdg" / "chunkd" / "chunkd.sock"


def test_embedded_defaults_fall_back_to_home(clean_env: Path) -> None:
    s = load_settings(None)
    assert s.watch_root == clean_env / ".local" / "share" / "chunkd" / "fl"
    assert s.socket == clean_env / ".local" / "share" / "chunkd" / "chunkd.sock"


def test_relative_xdg_data_home_is_ignored(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", "relative/xdg")
    assert default_data_home() == clean_env / ".local" / "share" / "chunkd"


def test_relative_chunkd_home_is_made_absolute(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHUNKD_HOME", "data")
    assert default_data_home() == tmp_path / "data"
    assert load_settings(None).watch_root == tmp_path / "data" / "fl"


def test_embedded_defaults_are_only_the_two_paths() -> None:
    assert set(EMBEDDED_DEFAULTS) == {"watch_root", "socket"}
    assert DEFAULTS["watch_root"] == "/srv/fl"
    assert DEFAULTS["socket"] == "/run/chunkd/chunkd.sock"


def test_defaults_do_not_touch_the_filesystem(clean_env: Path) -> None:
    load_settings(None)
    assert not clean_env.exists()


# -- the example file ----------------------------------------------------------------------------


def test_example_config_loads_and_documents_the_defaults() -> None:
    assert load_settings(EXAMPLE) == settings_from_mapping({}, source="x")


def test_example_config_sets_every_key() -> None:
    with open(EXAMPLE, "rb") as f:
        data = tomllib.load(f)
    assert set(data) == set(DEFAULTS) - {"clients"}
    assert data["round_regex"] == DEFAULT_ROUND_REGEX
    text = EXAMPLE.read_text()
    assert "# [[clients]]" in text


def test_example_clients_block_is_valid_when_uncommented(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    text = re.sub(r"^# (\[\[clients\]\]|id = |dir = )", r"\1", text, flags=re.MULTILINE)
    s = load_settings(write(tmp_path / "chunkd.toml", text))
    assert s.clients == (ClientConfig(id="7", dir=Path("/data/site7/checkpoints")),)


# -- every key: valid values ---------------------------------------------------------------------


def test_all_keys_from_a_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "conf" / "chunkd.toml",
        """
watch_root = "/data/fl"
client_dir_pattern = 'site-(?P<client>\\d+)'
file_patterns = ["*.ckpt"]
round_regex = 'step(?P<round>\\d+)'
db_path = "/var/lib/chunkd/{client}.db"
socket = "/run/x.sock"
socket_group = "fl"
allowed_uids = [0, 1000]
allowed_gids = [27]
observer = "polling"
chunk_num = 3
max_chunk_bytes = 8192
compression = "auto"
delta = true
chunk_keep_rounds = 0
retention_interval = "5m"
rescan_interval = 90
settle_delay = 0.25
delete_after_ingest = true
log_format = "json"
log_level = "debug"

[[clients]]
id = "a.b-c_1"
dir = "/x/a"

[[clients]]
id = "2"
dir = "/x/b"
""",
    )
    s = load_settings(path)
    assert s.watch_root == Path("/data/fl")
    assert s.client_dir_pattern.fullmatch("site-4").group("client") == "4"  # type: ignore[union-attr]
    assert s.file_patterns == ("*.ckpt",)
    assert s.round_regex.pattern == r"step(?P<round>\d+)"
    assert s.db_path == "/var/lib/chunkd/{client}.db"
    assert s.socket == Path("/run/x.sock")
    assert s.socket_group == "fl"
    assert s.allowed_uids == (0, 1000)
    assert s.allowed_gids == (27,)
    assert s.observer == "polling"
    assert s.chunk_num == 3
    assert s.max_chunk_bytes == 8192
    assert s.compression == "auto"
    assert s.delta is True
    assert s.chunk_keep_rounds == 0
    assert s.retention_interval_s == 300.0
    assert s.rescan_interval_s == 90.0
    assert s.settle_delay_s == 0.25
    assert s.delete_after_ingest is True
    assert s.log_format == "json"
    assert s.log_level == "debug"
    assert s.clients == (
        ClientConfig(id="a.b-c_1", dir=Path("/x/a")),
        ClientConfig(id="2", dir=Path("/x/b")),
    )


@pytest.mark.parametrize("value", ["none", "auto", "max"])
def test_compression_choices(value: str) -> None:
    assert settings(compression=value).compression == value


@pytest.mark.parametrize("value", ["auto", "inotify", "polling"])
def test_observer_choices(value: str) -> None:
    assert settings(observer=value).observer == value


@pytest.mark.parametrize("value", ["json", "console", "auto"])
def test_log_format_choices(value: str) -> None:
    assert settings(log_format=value).log_format == value


@pytest.mark.parametrize("value", ["debug", "info", "warning", "error"])
def test_log_level_choices(value: str) -> None:
    assert settings(log_level=value).log_level == value


@pytest.mark.parametrize(
    ("value", "expected"),
    [("4KiB", 4096), (4096, 4096), ("1GiB", 1 << 30), ("4MB", 4_000_000), ("1048576", 1 << 20)],
)
def test_max_chunk_bytes_values(value: object, expected: int) -> None:
    assert settings(max_chunk_bytes=value).max_chunk_bytes == expected


def test_chunk_num_bounds() -> None:
    assert settings(chunk_num=1).chunk_num == 1
    assert settings(chunk_num=1_000_000).chunk_num == 1_000_000


def test_settle_delay_may_be_zero() -> None:
    assert settings(settle_delay="0s").settle_delay_s == 0.0
    assert settings(settle_delay=0).settle_delay_s == 0.0


def test_durations_accept_every_form() -> None:
    s = settings(retention_interval="1h", rescan_interval="500ms", settle_delay="1.5s")
    assert (s.retention_interval_s, s.rescan_interval_s, s.settle_delay_s) == (3600.0, 0.5, 1.5)


def test_db_path_with_client_only() -> None:
    assert settings(db_path="/var/lib/chunkd/client_{client}.db").db_path == (
        "/var/lib/chunkd/client_{client}.db"
    )


# -- every key: invalid values -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "key", "problem"),
    [
        ({"watch_root": 3}, "watch_root", "must be a path string, got integer 3"),
        ({"watch_root": ""}, "watch_root", "must not be empty"),
        ({"watch_root": "/a\0b"}, "watch_root", "NUL"),
        ({"watch_root": "~/fl"}, "watch_root", "'~' is not expanded"),
        ({"client_dir_pattern": "client_("}, "client_dir_pattern", "not a valid regular expr"),
        ({"client_dir_pattern": r"client_(\d+)"}, "client_dir_pattern", "(?P<client>...)"),
        ({"client_dir_pattern": 1}, "client_dir_pattern", "got integer 1"),
        ({"file_patterns": []}, "file_patterns", "non-empty array"),
        ({"file_patterns": "*.pth"}, "file_patterns", "got string '*.pth'"),
        ({"file_patterns": ["*.pth", 3]}, "file_patterns[1]", "got integer 3"),
        ({"file_patterns": [""]}, "file_patterns[0]", "non-empty glob"),
        ({"file_patterns": ["ckpt/*.pth"]}, "file_patterns[0]", "no '/'"),
        ({"round_regex": "round_(?P<r>\\d+)"}, "round_regex", "(?P<round>...)"),
        ({"round_regex": "[unclosed"}, "round_regex", "not a valid regular expression"),
        ({"round_regex": ["x"]}, "round_regex", "got array"),
        ({"db_path": "/db/{clients}.db"}, "db_path", "got {clients}"),
        ({"db_path": "/db/{client.upper}.db"}, "db_path", "got {client.upper}"),
        ({"db_path": "/db/{client!r}.db"}, "db_path", "got {client!r}"),
        ({"db_path": "/db/{client:>5}.db"}, "db_path", "got {client:>5}"),
        ({"db_path": "/db/{}.db"}, "db_path", "only {client_dir} and {client}"),
        ({"db_path": "/db/{0}.db"}, "db_path", "only {client_dir} and {client}"),
        ({"db_path": "/db/{client.db"}, "db_path", "not a valid template"),
        ({"db_path": "/db/client}.db"}, "db_path", "not a valid template"),
        ({"db_path": "/db/chunks.db"}, "db_path", "each client gets its own database"),
        ({"db_path": "/db/{client_dir}/x.db"}, "db_path", "can only start the template"),
        ({"db_path": "{client}{client_dir}"}, "db_path", "can only start the template"),
        ({"db_path": "{client_dir}/"}, "db_path", "must name a file"),
        ({"db_path": 5}, "db_path", "got integer 5"),
        ({"socket": "/" + "s" * 200}, "socket", "at most 107"),
        ({"socket": False}, "socket", "got boolean false"),
        ({"socket_group": 100}, "socket_group", "must be a string, got integer 100"),
        ({"allowed_uids": 0}, "allowed_uids", "must be an array of integers"),
        ({"allowed_uids": [-1]}, "allowed_uids[0]", "from 0 to 4294967294, got -1"),
        ({"allowed_uids": [1, 2**32]}, "allowed_uids[1]", "from 0 to 4294967294"),
        ({"allowed_gids": ["wheel"]}, "allowed_gids[0]", "got string 'wheel'"),
        ({"allowed_gids": [True]}, "allowed_gids[0]", "got boolean true"),
        ({"observer": "fsevents"}, "observer", "one of 'auto', 'inotify', 'polling'"),
        ({"observer": "AUTO"}, "observer", "got 'AUTO'"),
        ({"chunk_num": 0}, "chunk_num", "must be an integer >= 1, got 0"),
        ({"chunk_num": -5}, "chunk_num", "must be an integer >= 1, got -5"),
        ({"chunk_num": 1_000_001}, "chunk_num", "must be an integer <= 1000000, got 1000001"),
        ({"chunk_num": True}, "chunk_num", "got boolean true"),
        ({"chunk_num": "10"}, "chunk_num", "got string '10'"),
        ({"chunk_num": 10.0}, "chunk_num", "got float 10.0"),
        ({"max_chunk_bytes": "1KiB"}, "max_chunk_bytes", "at least 4096 bytes"),
        ({"max_chunk_bytes": 4095}, "max_chunk_bytes", "at least 4096 bytes"),
        ({"max_chunk_bytes": "2GiB"}, "max_chunk_bytes", "at most 1073741824 bytes"),
        ({"max_chunk_bytes": (1 << 30) + 1}, "max_chunk_bytes", "at most 1073741824 bytes"),
        ({"max_chunk_bytes": "1 megabyte"}, "max_chunk_bytes", "unknown size unit"),
        ({"max_chunk_bytes": True}, "max_chunk_bytes", "got boolean true"),
        ({"max_chunk_bytes": 1048576.0}, "max_chunk_bytes", "got float"),
        ({"max_chunk_bytes": -1}, "max_chunk_bytes", "must not be negative"),
        ({"compression": "zstd"}, "compression", "one of 'none', 'auto', 'max', got 'zstd'"),
        ({"compression": None}, "compression", "got NoneType"),
        ({"delta": "yes"}, "delta", "must be true or false, got string 'yes'"),
        ({"delta": 1}, "delta", "must be true or false, got integer 1"),
        ({"chunk_keep_rounds": -1}, "chunk_keep_rounds", "must be an integer >= 0, got -1"),
        ({"chunk_keep_rounds": False}, "chunk_keep_rounds", "got boolean false"),
        ({"chunk_keep_rounds": 2**63}, "chunk_keep_rounds", "<="),
        ({"retention_interval": "0s"}, "retention_interval", "longer than 0s"),
        ({"retention_interval": 0}, "retention_interval", "longer than 0s"),
        ({"retention_interval": "-1s"}, "retention_interval", "expected a duration"),
        ({"retention_interval": "5 minutes"}, "retention_interval", "unknown duration unit"),
        ({"retention_interval": True}, "retention_interval", "got boolean true"),
        ({"retention_interval": "400d"}, "retention_interval", "at most 365 days"),
        ({"rescan_interval": "0ms"}, "rescan_interval", "longer than 0s"),
        ({"rescan_interval": float("inf")}, "rescan_interval", "finite"),
        ({"rescan_interval": [1]}, "rescan_interval", "got array"),
        ({"settle_delay": -0.5}, "settle_delay", "must not be negative"),
        ({"settle_delay": float("nan")}, "settle_delay", "finite"),
        ({"settle_delay": "1M"}, "settle_delay", "unknown duration unit 'M'"),
        ({"delete_after_ingest": "false"}, "delete_after_ingest", "got string 'false'"),
        ({"log_format": "text"}, "log_format", "one of 'json', 'console', 'auto'"),
        ({"log_level": "WARN"}, "log_level", "'debug', 'info', 'warning', 'error', got 'WARN'"),
        ({"log_level": "critical"}, "log_level", "got 'critical'"),
    ],
)
def test_invalid_value_names_key_and_problem(
    data: dict[str, object], key: str, problem: str
) -> None:
    message = config_error(data)
    assert message.startswith(f"config {SOURCE}: {key}: ")
    assert problem in message


def test_error_message_format_matches_the_spec_example() -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_mapping({"chunk_num": 0}, source="/etc/chunkd/chunkd.toml")
    assert (
        str(info.value)
        == "config /etc/chunkd/chunkd.toml: chunk_num: must be an integer >= 1, got 0"
    )
    assert info.value.exit_status == 78


def test_long_values_are_abbreviated_in_errors() -> None:
    message = config_error({"chunk_num": "x" * 10_000})
    assert len(message) < 300


# -- [[clients]] ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("clients", "key", "problem"),
    [
        ({"id": "1"}, "clients", "must be an array of tables"),
        ([{"id": "1"}], "clients[0].dir", "missing"),
        ([{"dir": "/x"}], "clients[0].id", "missing"),
        ([{"id": 7, "dir": "/x"}], "clients[0].id", 'must be a string (quote it: id = "7")'),
        ([{"id": True, "dir": "/x"}], "clients[0].id", "must be a string, got boolean true"),
        ([{"id": "", "dir": "/x"}], "clients[0].id", "1 to 64"),
        ([{"id": ".", "dir": "/x"}], "clients[0].id", "not '.' or '..'"),
        ([{"id": "..", "dir": "/x"}], "clients[0].id", "not '.' or '..'"),
        ([{"id": "a/b", "dir": "/x"}], "clients[0].id", "got 'a/b'"),
        ([{"id": "x" * 65, "dir": "/x"}], "clients[0].id", "1 to 64"),
        ([{"id": "a b", "dir": "/x"}], "clients[0].id", "got 'a b'"),
        ([{"id": "1", "dir": 3}], "clients[0].dir", "must be a path string"),
        ([{"id": "1", "dir": ""}], "clients[0].dir", "must not be empty"),
        ([{"id": "1", "dir": "~/x"}], "clients[0].dir", "'~' is not expanded"),
        ([{"id": "1", "dri": "/x"}], "clients[0].dri", "did you mean 'dir'?"),
        ([{"id": "1", "dir": "/x", "name": "n"}], "clients[0].name", "unknown key"),
        (["1"], "clients[0]", "must be a table"),
        ([{"id": "1", "dir": "/x"}, {"id": "1", "dir": "/y"}], "clients[1].id", "duplicate id '1'"),
        ([{"id": "1", "dir": "/x"}, {"id": "2", "dir": "/x"}], "clients[1].dir", "clients[0]"),
    ],
)
def test_invalid_clients(clients: object, key: str, problem: str) -> None:
    message = config_error({"clients": clients})
    assert message.startswith(f"config {SOURCE}: {key}: ")
    assert problem in message


def test_client_id_at_the_length_limit() -> None:
    s = settings(clients=[{"id": "x" * 64, "dir": "/x"}])
    assert s.clients[0].id == "x" * 64


def test_client_dir_relative_to_the_config_file(tmp_path: Path) -> None:
    path = write(tmp_path / "conf" / "chunkd.toml", '[[clients]]\nid = "7"\ndir = "site7"\n')
    assert load_settings(path).clients == (ClientConfig("7", tmp_path / "conf" / "site7"),)


# -- unknown keys --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("chunk_nums", "chunk_num"),
        ("retention_interval_s", "retention_interval"),
        ("settle_delay_s", "settle_delay"),
        ("watchroot", "watch_root"),
        ("max_chunk_size", "max_chunk_bytes"),
        ("Log_Level", "log_level"),
        ("client", "clients"),
    ],
)
def test_unknown_key_suggests_the_closest(key: str, suggestion: str) -> None:
    message = config_error({key: 1})
    assert message == f"config {SOURCE}: {key}: unknown key (did you mean {suggestion!r}?)"


def test_unknown_key_without_a_close_match() -> None:
    assert config_error({"zzzz": 1}) == f"config {SOURCE}: zzzz: unknown key"


def test_unknown_table_is_an_unknown_key(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[daemon]\nchunk_num = 3\n")
    with pytest.raises(ConfigError, match=r"c\.toml: daemon: unknown key"):
        load_settings(path)


# -- reading files -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("chunk_num = 10\nlog_level = \n", "line 2"),
        ("chunk_num = 10\ndelta = false\nchunk_num = 11\n", "line 3"),
        ("watch_root = '/srv/fl'\n\nnot toml at all\n", "line 3"),
        ('socket = "/run/x.sock\n', "line 1"),
        ("chunk_num = [1,\n", "line 2"),
    ],
)
def test_bad_toml_names_file_and_line(tmp_path: Path, text: str, line: str) -> None:
    path = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert message.startswith(f"config {path}: {line}")
    assert "invalid TOML" in message


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load_settings(str(tmp_path / "nope.toml"))


def test_config_path_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_settings(tmp_path)


def test_config_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'chunk_num = 10\nsocket_group = "gr\xfcn"\n')
    with pytest.raises(ConfigError, match="line 2: not UTF-8"):
        load_settings(path)


def test_config_with_bom_loads(tmp_path: Path) -> None:
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbfchunk_num = 4\n")
    assert load_settings(path).chunk_num == 4


def test_huge_config_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "huge.toml", "#" * (config.MAX_CONFIG_BYTES + 10))
    with pytest.raises(ConfigError, match="larger than"):
        load_settings(path)


def test_empty_config_file_gives_spec_defaults(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path / "empty.toml", "")) == settings_from_mapping(
        {}, source="x"
    )


def test_value_error_in_file_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "chunk_num = 0\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(info.value) == f"config {path}: chunk_num: must be an integer >= 1, got 0"


# -- relative paths ------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "conf"
    path = write(
        conf_dir / "chunkd.toml",
        'watch_root = "fl"\nsocket = "run/chunkd.sock"\ndb_path = "db/client_{client}.db"\n',
    )
    monkeypatch.chdir(tmp_path)  # a relative --config still resolves against the file's directory
    s = load_settings(Path("conf/chunkd.toml"))
    assert s.watch_root == conf_dir / "fl"
    assert s.socket == conf_dir / "run" / "chunkd.sock"
    assert s.db_path_for("3", Path("/anywhere")) == conf_dir / "db" / "client_3.db"
    assert load_settings(path) == s


def test_relative_db_path_in_a_directory_with_braces(tmp_path: Path) -> None:
    conf_dir = tmp_path / "we{ir}d"
    path = write(conf_dir / "chunkd.toml", 'db_path = "{client}.db"\n')
    assert load_settings(path).db_path_for("a", Path("/x")) == conf_dir / "a.db"


def test_absolute_paths_stay(tmp_path: Path) -> None:
    path = write(tmp_path / "chunkd.toml", 'watch_root = "/srv/other"\n')
    assert load_settings(path).watch_root == Path("/srv/other")


def test_relative_path_without_a_base_is_an_error() -> None:
    with pytest.raises(ConfigError, match="watch_root: must be an absolute path"):
        settings_from_mapping({"watch_root": "fl"}, source=SOURCE)
    with pytest.raises(ConfigError, match="db_path: must be an absolute path"):
        settings_from_mapping({"db_path": "{client}.db"}, source=SOURCE)


# -- db_path_for ---------------------------------------------------------------------------------


def test_db_path_for_default_layout() -> None:
    assert settings().db_path_for("3", Path("/srv/fl/client_3")) == Path(
        "/srv/fl/client_3/client_3_chunks.db"
    )


def test_db_path_for_client_dir_with_braces() -> None:
    assert settings().db_path_for("3", Path("/srv/{fl}")) == Path("/srv/{fl}/client_3_chunks.db")


@pytest.mark.parametrize("client_id", ["..", ".", "a/b", "", "x" * 65, "a\nb"])
def test_db_path_for_rejects_unsafe_ids(client_id: str) -> None:
    with pytest.raises(RequestError):
        settings(db_path="/var/lib/chunkd/{client}/chunks.db").db_path_for(client_id, Path("/x"))


def test_check_client_id() -> None:
    check_client_id("site-7.a_b")
    with pytest.raises(RequestError, match=r"'\.\.'"):
        check_client_id("..")


# -- which file ----------------------------------------------------------------------------------


def test_resolve_cli_value_wins(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHUNKD_CONFIG", "/env.toml")
    write(config.SYSTEM_CONFIG_PATH, "")
    assert resolve_config_path("/cli.toml") == Path("/cli.toml")


def test_resolve_env_next(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHUNKD_CONFIG", "/env.toml")
    write(config.SYSTEM_CONFIG_PATH, "")
    assert resolve_config_path(None) == Path("/env.toml")


def test_resolve_system_file_if_it_exists(clean_env: Path) -> None:
    assert resolve_config_path(None) is None
    write(config.SYSTEM_CONFIG_PATH, "")
    assert resolve_config_path(None) == config.SYSTEM_CONFIG_PATH


def test_resolve_empty_env_counts_as_unset(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHUNKD_CONFIG", "")
    assert resolve_config_path(None) is None


def test_resolve_empty_cli_value_is_an_error(clean_env: Path) -> None:
    with pytest.raises(ConfigError, match="--config"):
        resolve_config_path("")


def test_resolve_then_load_missing_env_file(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CHUNKD_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(resolve_config_path(None))


def test_system_path_is_the_spec_one() -> None:
    assert Path("/etc/chunkd/chunkd.toml") == config.SYSTEM_CONFIG_PATH


# -- parse_size ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1MiB", 1 << 20),
        ("512KiB", 512 << 10),
        ("4MB", 4_000_000),
        ("1048576", 1 << 20),
        (1048576, 1 << 20),
        ("1GiB", 1 << 30),
        ("1gib", 1 << 30),
        ("2kB", 2000),
        ("2KB", 2000),
        ("10B", 10),
        ("1.5KiB", 1536),
        (" 64 KiB ", 64 << 10),
        ("0", 0),
        ("1TiB", 1 << 40),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "MiB", "1 2MiB", "-1MiB", "1e6", "0.1KiB", "1.5B", "1MiB/s", "1M", "1k", "٣KiB", "1_000"],
)
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_size(text)


@pytest.mark.parametrize("value", [True, 1.5, None, [1]])
def test_parse_size_rejects_types(value: object) -> None:
    with pytest.raises(ConfigError, match="expected a size"):
        parse_size(value)  # type: ignore[arg-type]


_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "kB": 1000,
    "MB": 10**6,
    "GB": 10**9,
    "KiB": 1024,
    "MiB": 1 << 20,
    "GiB": 1 << 30,
}


@given(st.integers(min_value=0, max_value=10**12), st.sampled_from(sorted(_SIZE_UNITS)))
def test_parse_size_round_trip(n: int, unit: str) -> None:
    assert parse_size(f"{n}{unit}") == n * _SIZE_UNITS[unit]


@given(st.integers(min_value=0, max_value=2**62))
def test_parse_size_int_and_string_agree(n: int) -> None:
    assert parse_size(n) == parse_size(str(n)) == n


@given(st.text(max_size=60))
def test_parse_size_raises_only_config_error(text: str) -> None:
    try:
        result = parse_size(text)
    except ConfigError:
        return
    assert result >= 0


# -- parse_duration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("60s", 60.0),
        ("500ms", 0.5),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1.5s", 1.5),
        ("100ms", 0.1),
        ("90", 90.0),
        (90, 90.0),
        (0.25, 0.25),
        ("0", 0.0),
        (" 2 m ", 120.0),
        (".5s", 0.5),
    ],
)
def test_parse_duration(text: str | float, expected: float) -> None:
    result = parse_duration(text)
    assert result == expected
    assert type(result) is float


@pytest.mark.parametrize(
    "text", ["", "s", "-1s", "1 minute", "5M", "1S", "1h30m", "1e3s", "inf", "nan", "1.5.s"]
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_duration(text)


@pytest.mark.parametrize("value", [True, None, [1], float("inf"), float("-inf"), float("nan"), -1])
def test_parse_duration_rejects_values(value: object) -> None:
    with pytest.raises(ConfigError):
        parse_duration(value)  # type: ignore[arg-type]


def test_parse_duration_huge_int() -> None:
    with pytest.raises(ConfigError, match="too large"):
        parse_duration(10**400)


_DURATION_UNITS = {"ms": 1 / 1000, "s": 1, "m": 60, "h": 3600, "d": 86400, "": 1}


@given(st.integers(min_value=0, max_value=10**9), st.sampled_from(sorted(_DURATION_UNITS)))
def test_parse_duration_round_trip_integers(n: int, unit: str) -> None:
    expected = n / 1000 if unit == "ms" else float(n * _DURATION_UNITS[unit])
    assert parse_duration(f"{n}{unit}") == expected


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False))
def test_parse_duration_round_trip_floats(seconds: float) -> None:
    assert parse_duration(seconds) == seconds
    if "e" not in repr(seconds):  # no exponent notation in duration strings
        assert parse_duration(f"{seconds!r}s") == seconds


@given(st.text(max_size=60))
def test_parse_duration_raises_only_config_error(text: str) -> None:
    try:
        result = parse_duration(text)
    except ConfigError:
        return
    assert result >= 0


# -- whole documents -----------------------------------------------------------------------------


@given(
    chunk_num=st.integers(),
    chunk_keep_rounds=st.integers(),
    delta=st.one_of(st.booleans(), st.integers(), st.text(max_size=5)),
    settle_delay=st.one_of(st.text(max_size=10), st.floats(), st.integers()),
)
def test_any_scalar_values_give_settings_or_config_error(
    chunk_num: int, chunk_keep_rounds: int, delta: object, settle_delay: object
) -> None:
    data = {
        "chunk_num": chunk_num,
        "chunk_keep_rounds": chunk_keep_rounds,
        "delta": delta,
        "settle_delay": settle_delay,
    }
    try:
        s = settings_from_mapping(data, source=SOURCE)
    except ConfigError as e:
        assert str(e).startswith(f"config {SOURCE}: ")
        return
    assert 1 <= s.chunk_num <= 1_000_000
    assert s.chunk_keep_rounds >= 0
    assert isinstance(s.delta, bool)
    assert 0 <= s.settle_delay_s <= config.MAX_DURATION_S
