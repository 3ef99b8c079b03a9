"""Human output of ``list`` and ``status`` for many clients (issue 20): readable at 10,000.

``list`` prints one line per client as it renders them, then a totals line; ``status`` lists
only the clients that need a look once there are more than ``QUIET_ABOVE``, and counts the rest.
"""

from __future__ import annotations

from chunkd.cli.list import client_lines, render_clients
from chunkd.cli.status import QUIET_ABOVE, render_status
from chunkd.summary import summarize_store


def _entry(client: str, rounds: int = 2) -> dict[str, object]:
    entry = summarize_store(client, None)
    entry.update(round_count=rounds, latest_round=rounds, file_bytes=2048, db_bytes=1024)
    entry.update(disk_ratio=2.0)
    return entry


def test_list_of_many_clients_is_a_line_each_and_a_totals_line() -> None:
    clients = [_entry(f"{i:05d}") for i in range(1000)]
    lines = client_lines(clients)
    assert next(lines).split()[:2] == ["CLIENT", "ROUNDS"]  # a generator: printed as rendered
    rest = list(lines)
    assert len(rest) == 1001
    assert rest[0].split()[:3] == ["00000", "2", "2"]
    assert rest[-1] == (
        "1000 clients: 2000 rounds, 1.95 MiB of checkpoints in 1000.0 KiB of databases "
        "(ratio 2.00x)"
    )
    assert render_clients(clients).splitlines()[-1] == rest[-1]


def test_one_client_has_no_totals_line() -> None:
    text = render_clients([_entry("a")])
    assert len(text.splitlines()) == 2


def test_status_of_many_clients_shows_only_those_that_need_a_look() -> None:
    idle = {"queue_depth": 0, "ingested": 1, "rejected": 0, "errors": 0, "last_error": None}
    clients = {f"{i:05d}": dict(idle) for i in range(QUIET_ABOVE * 4)}
    clients["00007"] = {**idle, "queue_depth": 3}
    clients["00042"] = {**idle, "errors": 1, "last_error": {"path": "/x.pth", "error": "bad"}}
    text = render_status({"clients_watched": len(clients), "clients": clients})
    rows = [line.split()[0] for line in text.splitlines() if line.startswith("000")]
    assert rows == ["00007", "00042"]
    assert f"{len(clients) - 2} other clients: nothing queued" in text
    assert "client 00042: /x.pth: bad" in text

    quiet = {f"{i:05d}": dict(idle) for i in range(QUIET_ABOVE + 1)}
    text = render_status({"clients": quiet})
    assert f"{QUIET_ABOVE + 1} clients: nothing queued" in text
    assert not any(line.startswith("000") for line in text.splitlines())


def test_status_of_a_few_clients_shows_every_one() -> None:
    idle = {"queue_depth": 0, "ingested": 1, "rejected": 0, "errors": 0, "last_error": None}
    text = render_status({"clients": {f"{i}": dict(idle) for i in range(QUIET_ABOVE)}})
    assert sum(1 for line in text.splitlines() if line.split()[:1] == ["7"]) == 1
    assert "nothing queued" not in text
