"""The Prometheus endpoint of a real daemon, scraped over HTTP (README "Metrics")."""

from __future__ import annotations

import json
import socket
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.daemon.checkpoints import save_model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(addr: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """sample name and labels -> value, parsed by prometheus_client's own parser."""
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain")
        text = answer.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def eventually(condition, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if condition():
                return
        except Exception:  # e.g. the database is not there yet
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.1)


def test_a_scrape_counts_what_the_log_and_status_report(make_daemon, tmp_path) -> None:
    addr = f"127.0.0.1:{free_port()}"
    # log_level=warning hides checkpoint.ingested and daemon.ready: the metrics count all the same
    daemon = make_daemon(start=False, metrics_addr=addr, chunk_keep_rounds=1, log_level="warning")
    daemon.start(wait_ready=False)
    eventually(lambda: value(scrape(addr), "chunkd_ready") == 1)
    client = daemon.watch_root / "client_1"
    for r in (1, 2):
        save_model(client / f"model_round_{r}.pth", r)
        eventually(lambda r=r: daemon.rounds("1")[-1:] == [r])
    (client / "model_round_3.pth").write_bytes(b"not a checkpoint")
    eventually(lambda: json.loads(daemon.cli("status", "--json").stdout)["rejected"] == 1)
    out = tmp_path / "r2.pth"
    assert daemon.cli("restore", "--client", "1", "--round", "2", "-o", str(out)).returncode == 0
    assert daemon.cli("prune").returncode == 0

    samples = scrape(addr)
    assert value(samples, "chunkd_checkpoints_total", client="1", outcome="ingested") == 2
    assert value(samples, "chunkd_checkpoints_total", client="1", outcome="rejected") == 1
    assert value(samples, "chunkd_checkpoints_total", client="1", outcome="superseded") == 0
    sizes = sum((client / f"model_round_{r}.pth").stat().st_size for r in (1, 2))
    assert value(samples, "chunkd_ingest_read_bytes_total", client="1") == sizes
    assert value(samples, "chunkd_ingest_added_bytes_total", client="1") > 0
    assert value(samples, "chunkd_ingest_duration_seconds_count") == 2
    assert value(samples, "chunkd_restores_total", outcome="served") == 1
    assert value(samples, "chunkd_restore_duration_seconds_count") == 1
    assert value(samples, "chunkd_retention_removed_rounds_total") == 1
    assert value(samples, "chunkd_retention_freed_bytes_total") > 0
    assert value(samples, "chunkd_last_ingest_timestamp_seconds") > time.time() - 120

    status = json.loads(daemon.cli("status", "--json").stdout)
    assert value(samples, "chunkd_ready") == 1
    assert value(samples, "chunkd_clients") == status["clients_watched"] == 1
    assert value(samples, "chunkd_queue_depth") == status["queue_depth"] == 0
    assert value(samples, "chunkd_damaged_databases") == 0
    listed = json.loads(daemon.cli("list", "--client", "1", "--json").stdout)["clients"][0]
    assert value(samples, "chunkd_client_rounds", client="1") == listed["round_count"] == 1
    assert value(samples, "chunkd_client_plain_bytes", client="1") == listed["file_bytes"]
    db = daemon.db("1")
    on_disk = sum(p.stat().st_size for p in db.parent.glob(db.name + "*") if p.suffix != ".lock")
    assert value(samples, "chunkd_client_stored_bytes", client="1") == on_disk
    assert value(samples, "chunkd_stored_bytes") == on_disk
    # the process's own figures, from the library's process collector
    assert value(samples, "process_resident_memory_bytes") > 10 << 20
    assert value(samples, "process_open_fds") > 3


def test_clients_past_the_label_cap_share_one_series(make_daemon) -> None:
    addr = f"127.0.0.1:{free_port()}"
    daemon = make_daemon(start=False, metrics_addr=addr, metrics_client_labels=2)
    for c in range(1, 6):
        (daemon.watch_root / f"client_{c}").mkdir(parents=True)
    daemon.start()
    for c in range(1, 6):
        save_model(daemon.watch_root / f"client_{c}" / "model_round_1.pth", c)
    eventually(lambda: all(daemon.rounds(str(c)) == [1] for c in range(1, 6)))
    samples = scrape(addr)
    clients = {
        dict(labels)["client"]
        for (name, labels) in samples
        if name == "chunkd_checkpoints_total" and dict(labels).get("outcome") == "ingested"
    }
    assert clients == {"1", "2", "_other"}  # sorted at start-up: the first two get their own
    assert value(samples, "chunkd_checkpoints_total", client="_other", outcome="ingested") == 3
    assert value(samples, "chunkd_clients") == 5
    per_client = {
        dict(labels)["client"] for (name, labels) in samples if name.startswith("chunkd_client_")
    }
    assert per_client == {"1", "2"}


def test_the_textfile_is_written_for_node_exporter(make_daemon, tmp_path) -> None:
    textfile = tmp_path / "textfile" / "chunkd.prom"
    textfile.parent.mkdir()
    make_daemon(metrics_textfile=str(textfile))
    families = {f.name for f in text_string_to_metric_families(textfile.read_text())}
    assert {"chunkd_checkpoints", "chunkd_ready", "process_open_fds"} <= families
    assert not list(textfile.parent.glob("*.tmp*")), "written by rename, no temporary file left"


def test_a_metrics_address_in_use_refuses_to_start_naming_the_key(make_daemon) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = make_daemon(start=False, metrics_addr=f"127.0.0.1:{port}")
        daemon.start(wait_ready=False)
        assert daemon.proc is not None
        assert daemon.proc.wait(timeout=30) == 78  # a config error: systemd does not loop
    (failed,) = [e for e in daemon.events() if e["event"] == "config.invalid"]
    assert failed["key"] == "metrics_addr" and "cannot listen" in str(failed["error"])
    assert not daemon.db("1").exists()


def test_a_textfile_that_cannot_be_written_refuses_to_start(make_daemon, tmp_path) -> None:
    daemon = make_daemon(start=False, metrics_textfile=str(tmp_path / "missing" / "chunkd.prom"))
    daemon.start(wait_ready=False)
    assert daemon.proc is not None and daemon.proc.wait(timeout=30) == 78
    (failed,) = [e for e in daemon.events() if e["event"] == "config.invalid"]
    assert failed["key"] == "metrics_textfile" and "cannot write" in str(failed["error"])
