"""The metrics' pure parts: bounded client labels and the event -> metric mapping."""

from __future__ import annotations

import io

import structlog
from prometheus_client import generate_latest

from chunkd import log
from chunkd.daemon.metrics import (
    OTHER_CLIENTS,
    ClientLabels,
    DaemonFigures,
    build_registry,
)


def idle_figures() -> DaemonFigures:
    return DaemonFigures(
        ready=True,
        clients=0,
        queue_depth=0,
        ingesting=0,
        retention_pending=0,
        open_databases=0,
        damaged_databases=0,
        stored_bytes=0,
        replica=None,
    )


def test_labels_are_capped_and_sticky() -> None:
    labels = ClientLabels(limit=2)
    assert [labels(c) for c in ("b", "a", "c", "d")] == ["b", "a", OTHER_CLIENTS, OTHER_CLIENTS]
    assert labels("c") == OTHER_CLIENTS and labels("b") == "b"  # sticky both ways
    assert labels(None) == "" and labels("") == ""  # no client: no place taken
    assert labels.labelled() == {"a", "b"}


def test_ten_thousand_clients_make_a_bounded_number_of_series() -> None:
    labels = ClientLabels(limit=100)
    registry, events = build_registry(idle_figures, labels)
    for i in range(10_000):
        cid = f"{i:05d}"
        events.observe({"event": log.CLIENT_ADDED, "client": cid})
        events.observe(
            {"event": log.CHECKPOINT_INGESTED, "client": cid, "bytes_in": 10, "bytes_new": 5}
        )
    text = generate_latest(registry).decode()
    series = [line for line in text.splitlines() if line.startswith("chunkd_")]
    assert len(series) < 1_000, len(series)
    other = registry.get_sample_value(
        "chunkd_checkpoints_total", {"client": OTHER_CLIENTS, "outcome": "ingested"}
    )
    assert other == 9_900
    assert registry.get_sample_value("chunkd_ingest_read_bytes_total", {"client": "00042"}) == 10


def test_events_map_to_metrics() -> None:
    registry, events = build_registry(idle_figures, ClientLabels(limit=10))
    for event in (
        {"event": log.CHECKPOINT_INGESTED, "client": "7", "bytes_in": 100, "duration_ms": 250},
        {"event": log.CHECKPOINT_SUPERSEDED, "client": "7"},
        {"event": log.CHECKPOINT_REJECTED, "client": "7"},
        {"event": log.INGEST_FAILED, "client": "7"},
        {"event": log.RESTORE_SERVED, "duration_ms": 1500.0},
        {"event": log.RESTORE_FAILED},
        {"event": log.RETENTION_STARTED, "clients": 3},
        {"event": log.RETENTION_PRUNED, "rounds_removed": [1, 2], "bytes_removed": 4096},
        {"event": log.RETENTION_PRUNED, "rounds_removed": [3], "bytes_removed": 9, "dry_run": True},
        {"event": log.REPLICA_UPLOADED, "bytes_uploaded": 77},
        {"event": log.REPLICA_FAILED},
        {"event": log.VERIFY_FAILED, "client": "7"},
        {"event": log.CHECKPOINT_INGESTED, "client": "7", "bytes_in": "garbage"},
    ):
        events.observe(event)

    def get(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert get("chunkd_checkpoints_total", client="7", outcome="ingested") == 2
    assert get("chunkd_checkpoints_total", client="7", outcome="superseded") == 1
    assert get("chunkd_checkpoints_total", client="7", outcome="rejected") == 1
    assert get("chunkd_ingest_read_bytes_total", client="7") == 100  # a bad field adds nothing
    assert get("chunkd_ingest_failures_total", client="7") == 1
    assert get("chunkd_ingest_duration_seconds_sum") == 0.25
    assert get("chunkd_restores_total", outcome="served") == 1
    assert get("chunkd_restores_total", outcome="failed") == 1
    assert get("chunkd_restore_duration_seconds_bucket", le="2.5") == 1
    assert get("chunkd_retention_passes_total") == 1
    assert get("chunkd_retention_removed_rounds_total") == 2  # a dry run removes nothing
    assert get("chunkd_retention_freed_bytes_total") == 4096
    assert get("chunkd_replica_uploaded_bytes_total") == 77
    assert get("chunkd_replica_failures_total") == 1
    assert get("chunkd_verify_failures_total") == 1


def test_a_tap_sees_events_the_log_level_hides_and_cannot_break_a_line() -> None:
    seen: list[str] = []
    out = io.StringIO()
    log.configure_logging("json", "error", stream=out)

    def broken(_: object) -> None:
        raise RuntimeError("a broken tap")

    remove_seen = log.add_tap(lambda e: seen.append(str(e["event"])))
    remove_broken = log.add_tap(broken)
    try:
        logger = structlog.get_logger("chunkd.test").bind(client="3")
        logger.info(log.CHECKPOINT_INGESTED)
        logger.error(log.INGEST_FAILED)
    finally:
        remove_seen()
        remove_broken()
    assert seen == [log.CHECKPOINT_INGESTED, log.INGEST_FAILED]
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and log.INGEST_FAILED in lines[0]  # info hidden, error written
