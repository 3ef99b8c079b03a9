"""The daemon's Prometheus metrics: counted from its log events, read from its state when scraped.

Counters and histograms come from the structlog events themselves (:func:`chunkd.log.add_tap`),
so a metric can never disagree with the log an operator greps: ``checkpoint.ingested`` is what
``chunkd_checkpoints_total{outcome="ingested"}`` counts, whatever ``log_level`` hides. Gauges
(queue depth, damaged databases, replica lag, stored bytes) are read from the running daemon at
scrape time by :class:`DaemonCollector`, so they cost nothing between scrapes.

Label cardinality is bounded: ``client`` is the only label with an open set of values, and only
the first ``metrics_client_labels`` clients seen get one (:class:`ClientLabels`); the others
are counted together as ``client="_other"``. With 10,000 clients and the default of 100, a
scrape has about 1,000 series. A client keeps the label it got for as long as the daemon runs,
so every counter series only ever grows.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from chunkd import __version__, log

#: The ``client`` label of every client past the cap.
OTHER_CLIENTS = "_other"
#: Seconds: a small checkpoint takes milliseconds, a large model minutes.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

_OUTCOMES = {
    log.CHECKPOINT_INGESTED: "ingested",
    log.CHECKPOINT_DUPLICATE: "duplicate",
    log.CHECKPOINT_REJECTED: "rejected",
    log.CHECKPOINT_SUPERSEDED: "superseded",
}


class ClientLabels:
    """Client id -> its ``client`` label: its own id for the first ``limit`` clients, then
    :data:`OTHER_CLIENTS`. Sticky, so a labelled client's series never change owner."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._labels: dict[str, str] = {}
        self._own = 0  # clients with a label of their own

    def __call__(self, client_id: object) -> str:
        key = "" if client_id is None else str(client_id)
        with self._lock:
            label = self._labels.get(key)
            if label is None:
                if not key or self._own < self.limit:
                    label = key
                    self._own += bool(key)
                else:
                    label = OTHER_CLIENTS
                self._labels[key] = label  # the overflow too: sticky either way
            return label

    def labelled(self) -> frozenset[str]:
        """The clients that have a label of their own."""
        with self._lock:
            return frozenset(k for k, v in self._labels.items() if v == k and k)


@dataclass(frozen=True, slots=True)
class ClientFigures:
    """What one client's database holds, for the per-client gauges."""

    stored_bytes: int  # the database file with its journal or WAL, as the disk counts it
    plain_bytes: int  # its stored rounds as plain checkpoint files (``list``'s file_bytes)
    rounds: int


@dataclass(frozen=True, slots=True)
class DaemonFigures:
    """The daemon's state at a scrape (see :meth:`chunkd.daemon.service.Daemon.figures`)."""

    ready: bool
    clients: int
    queue_depth: int
    ingesting: int
    retention_pending: int
    open_databases: int
    damaged_databases: int
    stored_bytes: int  # every client's database, as the disk counts it
    replica: Mapping[str, object] | None
    per_client: Mapping[str, ClientFigures] = field(default_factory=dict)


class EventMetrics:
    """The counters and histograms fed by log events (one instance per daemon)."""

    def __init__(self, registry: CollectorRegistry, labels: ClientLabels) -> None:
        self._label = labels
        self.checkpoints = Counter(
            "chunkd_checkpoints",
            "Checkpoint files handled, by outcome (ingested, duplicate, rejected, superseded).",
            ["client", "outcome"],
            registry=registry,
        )
        self.bytes_in = Counter(
            "chunkd_ingest_read_bytes",
            "Bytes of checkpoint files ingested (the files' sizes).",
            ["client"],
            registry=registry,
        )
        self.bytes_added = Counter(
            "chunkd_ingest_added_bytes",
            "Bytes the ingests added to the databases (new chunks, as stored).",
            ["client"],
            registry=registry,
        )
        self.ingest_failures = Counter(
            "chunkd_ingest_failures",
            "Ingests that failed on chunkd's side (ingest.failed): retried, but look.",
            ["client"],
            registry=registry,
        )
        self.ingest_seconds = Histogram(
            "chunkd_ingest_duration_seconds",
            "Time to ingest one checkpoint file.",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.restores = Counter(
            "chunkd_restores",
            "Restores over the socket, by outcome (served, failed).",
            ["outcome"],
            registry=registry,
        )
        self.restore_seconds = Histogram(
            "chunkd_restore_duration_seconds",
            "Time to serve one restore over the socket.",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.retention_passes = Counter(
            "chunkd_retention_passes",
            "Scheduled retention passes (every retention_interval).",
            registry=registry,
        )
        self.retention_prunes = Counter(
            "chunkd_retention_prunes",
            "Retention runs on a client that removed something (retention.pruned).",
            registry=registry,
        )
        self.retention_rounds = Counter(
            "chunkd_retention_removed_rounds",
            "Rounds removed by retention.",
            registry=registry,
        )
        self.retention_bytes = Counter(
            "chunkd_retention_freed_bytes",
            "Bytes of chunks retention removed from the databases.",
            registry=registry,
        )
        self.retention_failures = Counter(
            "chunkd_retention_failures", "Retention runs that failed.", registry=registry
        )
        self.replica_uploads = Counter(
            "chunkd_replica_uploaded_rounds",
            "Round versions uploaded to the replica.",
            registry=registry,
        )
        self.replica_bytes = Counter(
            "chunkd_replica_uploaded_bytes",
            "Bytes sent to the replica (chunks and manifests).",
            registry=registry,
        )
        self.replica_failures = Counter(
            "chunkd_replica_failures",
            "Replica operations that failed (replica.failed); each is retried.",
            registry=registry,
        )
        self.last_ingest = Gauge(
            "chunkd_last_ingest_timestamp_seconds",
            "When a checkpoint was last ingested (Unix time; 0 = not since start).",
            registry=registry,
        )
        self.verify_failures = Counter(
            "chunkd_verify_failures",
            "Databases a verify found damaged (verify.failed).",
            registry=registry,
        )

        for outcome in ("served", "failed"):
            self.restores.labels(outcome)  # every series exists from the start, at 0

    def _client_series(self, client: str) -> None:
        """A new client's series, at 0: an alert on a rate needs the series before the event."""
        for outcome in _OUTCOMES.values():
            self.checkpoints.labels(client, outcome)
        for counter in (self.bytes_in, self.bytes_added, self.ingest_failures):
            counter.labels(client)

    def observe(self, event: Mapping[str, Any]) -> None:
        """Count one log event (a :func:`chunkd.log.add_tap` tap; must be quick)."""
        name = event.get("event")
        outcome = _OUTCOMES.get(name)  # type: ignore[arg-type]
        if outcome is not None:
            client = self._label(event.get("client"))
            self.checkpoints.labels(client, outcome).inc()
            if name == log.CHECKPOINT_INGESTED:
                self.bytes_in.labels(client).inc(_number(event.get("bytes_in")))
                self.bytes_added.labels(client).inc(_number(event.get("bytes_new")))
                self.ingest_seconds.observe(_number(event.get("duration_ms")) / 1000)
                self.last_ingest.set_to_current_time()
        elif name == log.CLIENT_ADDED:
            self._client_series(self._label(event.get("client")))
        elif name == log.INGEST_FAILED:
            self.ingest_failures.labels(self._label(event.get("client"))).inc()
        elif name == log.RESTORE_SERVED:
            self.restores.labels("served").inc()
            self.restore_seconds.observe(_number(event.get("duration_ms")) / 1000)
        elif name == log.RESTORE_FAILED:
            self.restores.labels("failed").inc()
        elif name == log.RETENTION_STARTED:
            self.retention_passes.inc()
        elif name == log.RETENTION_PRUNED and not event.get("dry_run"):
            self.retention_prunes.inc()
            removed = event.get("rounds_removed")
            self.retention_rounds.inc(len(removed) if isinstance(removed, list) else 0)
            self.retention_bytes.inc(_number(event.get("bytes_removed")))
        elif name == log.RETENTION_FAILED:
            self.retention_failures.inc()
        elif name == log.REPLICA_UPLOADED:
            self.replica_uploads.inc()
            self.replica_bytes.inc(_number(event.get("bytes_uploaded")))
        elif name == log.REPLICA_FAILED:
            self.replica_failures.inc()
        elif name == log.VERIFY_FAILED:
            self.verify_failures.inc()


def _number(value: object) -> float:
    """A numeric log field, or 0 (a counter is never decremented by a bad field)."""
    return float(value) if isinstance(value, int | float) and value >= 0 else 0.0


class DaemonCollector(Collector):
    """The gauges, read from the daemon at each scrape."""

    def __init__(self, figures: Callable[[], DaemonFigures]) -> None:
        self._figures = figures

    def collect(self) -> Iterator[Metric]:
        f = self._figures()
        info = InfoMetricFamily("chunkd_build", "chunkd's version.")
        info.add_metric([], {"version": __version__})
        yield info
        yield _gauge("chunkd_ready", "1 once the start-up scan is done (READY=1).", int(f.ready))
        yield _gauge("chunkd_clients", "Client directories watched.", f.clients)
        yield _gauge("chunkd_queue_depth", "Checkpoint files waiting for ingest.", f.queue_depth)
        yield _gauge("chunkd_ingesting", "Ingests in progress now.", f.ingesting)
        yield _gauge(
            "chunkd_retention_pending_clients",
            "Clients whose stored rounds changed since their last retention run.",
            f.retention_pending,
        )
        yield _gauge("chunkd_open_databases", "Client databases open now.", f.open_databases)
        yield _gauge(
            "chunkd_damaged_databases",
            "Databases found damaged by list, verify or a restore (see chunkd status).",
            f.damaged_databases,
        )
        yield _gauge(
            "chunkd_stored_bytes", "Every client database on disk, in bytes.", f.stored_bytes
        )
        stored = GaugeMetricFamily(
            "chunkd_client_stored_bytes",
            "A labelled client's database on disk, in bytes (with its journal or WAL).",
            labels=["client"],
        )
        plain = GaugeMetricFamily(
            "chunkd_client_plain_bytes",
            "A labelled client's stored rounds as plain checkpoint files, in bytes.",
            labels=["client"],
        )
        rounds = GaugeMetricFamily(
            "chunkd_client_rounds", "Rounds a labelled client has stored.", labels=["client"]
        )
        for client_id, c in sorted(f.per_client.items()):
            stored.add_metric([client_id], c.stored_bytes)
            plain.add_metric([client_id], c.plain_bytes)
            rounds.add_metric([client_id], c.rounds)
        yield stored
        yield plain
        yield rounds
        yield from _replica_gauges(f.replica)


def _replica_gauges(replica: Mapping[str, object] | None) -> Iterator[Metric]:
    if replica is None:
        return
    yield _gauge(
        "chunkd_replica_lag_rounds",
        "Round versions the replica should hold and does not yet.",
        _float(replica.get("lag_rounds")),
    )
    yield _gauge(
        "chunkd_replica_lag_bytes",
        "Bytes of checkpoint files the replica does not hold yet.",
        _float(replica.get("lag_bytes")),
    )
    yield _gauge(
        "chunkd_replica_lag_seconds",
        "How long the replica has lacked some round (0 when it is in step).",
        _float(replica.get("lag_s")),
    )


def _float(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def build_registry(
    figures: Callable[[], DaemonFigures], labels: ClientLabels
) -> tuple[CollectorRegistry, EventMetrics]:
    """A registry of its own (not the library's global one): the daemon's events and gauges, and
    the process's RSS, open fds and CPU (``process_*``)."""
    disable_created_metrics()  # ``*_created`` series would double the count for nothing here
    registry = CollectorRegistry(auto_describe=True)
    events = EventMetrics(registry, labels)
    registry.register(DaemonCollector(figures))
    ProcessCollector(registry=registry)
    return registry, events
