"""What the CLI promises beyond single commands: it starts without heavy imports (issue 10,
item 9), the README's event list and exit-status table match the code (item 11), progress is
drawn with total, percent, rate and ETA on a terminal only (item 8)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from chunkd import log
from chunkd.cli.main import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_USAGE
from chunkd.cli.render import Progress
from chunkd.daemon.progress import IngestProgress
from chunkd.errors import EXIT_STATUS_BY_CODE

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
HEAVY = ("numpy", "torch", "zstandard", "structlog", "watchdog", "apscheduler", "safetensors")


@pytest.mark.parametrize(
    "argv", [["status"], ["list"], ["restore", "--client", "1", "-o", "x.pth"], ["--version"]]
)
def test_cli_commands_that_ask_the_daemon_import_nothing_heavy(argv: list[str], tmp_path) -> None:
    """Run the console script's main in a fresh interpreter (no daemon answers: exit 8), then
    look at what it imported. Import time is what made every call take 1-2 s."""
    code = (
        "import sys\n"
        "from chunkd.cli.main import main\n"
        "try:\n"
        f"    status = main({argv!r} + (['--socket', {str(tmp_path / 'none.sock')!r}]"
        f" if {argv!r} != ['--version'] else []))\n"
        "except SystemExit as e:\n"
        "    status = e.code\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "CHUNKD_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    heavy_line = [line for line in result.stdout.splitlines() if line.startswith("HEAVY=")]
    assert heavy_line == ["HEAVY="], result.stdout


def _readme_events() -> set[str]:
    paragraph = README[README.index("Events: `daemon.started`") :]
    paragraph = paragraph[: paragraph.index("\n\n")]
    return set(re.findall(r"`([a-z_]+\.[a-z_]+)`", paragraph))


def _emitted_events() -> set[str]:
    """Events some module of chunkd logs (``log.NAME`` or the constant by name)."""
    names = {v: k for k, v in vars(log).items() if isinstance(v, str) and v in log.ALL_EVENTS}
    source = "\n".join(p.read_text() for p in (REPO / "chunkd").rglob("*.py") if p.name != "log.py")
    return {event for event, name in names.items() if re.search(rf"\b{name}\b", source)}


def test_readme_lists_every_event_chunkd_emits() -> None:
    listed = _readme_events()
    assert _emitted_events() - listed == set()
    assert listed - set(log.ALL_EVENTS) == set(), "the README names an event nothing emits"


def test_readme_exit_status_table_matches_the_code() -> None:
    table = README[README.index("| status | meaning |") :]
    table = table[: table.index("\n\n")]
    documented = {int(n) for n in re.findall(r"^\| (\d+) \|", table, re.MULTILINE)}
    used = {
        0,
        EXIT_USAGE,
        EXIT_INTERRUPTED,
        EXIT_BROKEN_PIPE,
        *EXIT_STATUS_BY_CODE.values(),
    }
    assert documented == used


def test_progress_line_has_total_percent_rate_and_eta() -> None:
    stream = io.StringIO()
    bar = Progress("restore", total=100 << 20, stream=stream, enabled=True)
    bar._started -= 2.0  # two seconds in: a rate and an ETA can be given
    bar.update(25 << 20, force=True)
    line = stream.getvalue()
    assert "25%" in line and "100.0 MiB" in line and "/s" in line and "ETA" in line
    bar.close()
    assert stream.getvalue().endswith("\r\x1b[K")


def test_progress_draws_nothing_when_not_a_terminal() -> None:
    stream = io.StringIO()  # isatty() is False, like a pipe
    with Progress("restore", total=10, stream=stream) as bar:
        bar.update(5, force=True)
    assert stream.getvalue() == ""


class _Lines:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, object]]] = []

    def info(self, event: str, **fields: object) -> None:
        self.lines.append((event, fields))


def test_ingest_progress_logs_only_for_long_files() -> None:
    logger = _Lines()
    quick = IngestProgress(logger, "/srv/fl/client_1/m.pth")
    quick(50, 100)
    quick(100, 100)
    assert logger.lines == []  # done within the interval: no lines
    slow = IngestProgress(logger, "/srv/fl/client_1/big.pth")
    slow._started -= 3.0
    slow._last -= 3.0
    slow(30 << 20, 120 << 20)
    slow(31 << 20, 120 << 20)  # within 2 s of the previous line: not logged
    assert len(logger.lines) == 1
    event, fields = logger.lines[0]
    assert event == log.CHECKPOINT_PROGRESS
    assert fields["percent"] == 25.0 and fields["bytes_total"] == 120 << 20
    assert fields["eta_s"] is not None and fields["eta_s"] > 0
    json.dumps(fields)  # a log line's fields are plain JSON values


def test_ingests_under_way_are_listed_until_done() -> None:
    from chunkd.daemon.progress import in_progress

    progress = IngestProgress(_Lines(), "/srv/fl/client_9/under_way.pth")
    progress(10, 40)
    (entry,) = [e for e in in_progress() if e["path"] == "/srv/fl/client_9/under_way.pth"]
    assert (entry["bytes_done"], entry["bytes_total"]) == (10, 40)
    progress(40, 40)
    assert all(e["path"] != "/srv/fl/client_9/under_way.pth" for e in in_progress())


def test_console_log_lines_show_paths_as_text() -> None:
    from chunkd.log import configure_logging, get_logger

    stream = io.StringIO()
    configure_logging("console", "info", stream=stream)
    try:
        get_logger("chunkd.test").info(log.CHECKPOINT_DETECTED, path=Path("/srv/fl/c_1/m.pth"))
    finally:
        configure_logging("json", "info")
    line = stream.getvalue()
    assert "path=/srv/fl/c_1/m.pth" in line and "PosixPath" not in line


def test_the_readme_says_which_tests_each_make_target_runs() -> None:
    """Issue 21, friction 7: what `make test` leaves out is what the README says it leaves to
    `make integration` and `make campaign`, and every marker is registered."""
    makefile = (REPO / "Makefile").read_text()
    recipe = re.search(r"^test: lint\n\t(.+)$", makefile, re.MULTILINE)
    assert recipe is not None
    left_out = set(re.findall(r"not (\w+)", recipe.group(1)))
    assert left_out == {"campaign", "integration", "scale"}
    integration = re.search(r"^integration: setup\n(?:\t.+\n)+", makefile, re.MULTILINE)
    assert integration is not None and '-m "integration or scale"' in integration.group(0)
    development = " ".join(README[README.index("## Development") :].split())
    for marker in left_out:
        assert f"marker `{marker}`" in development, marker
    pyproject = (REPO / "pyproject.toml").read_text()
    for marker in left_out - {"campaign"}:  # campaign is registered in tests/conftest.py
        assert f'"{marker}:' in pyproject, marker
    assert "about 9 minutes" in development and "about 9 minutes" in makefile.lower()
