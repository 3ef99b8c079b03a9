"""Serving the metrics: an HTTP endpoint (``metrics_addr``) and/or a node_exporter textfile
(``metrics_textfile``), both off by default; and the daemon's figures they read at each scrape.

The installed unit keeps the daemon off the network (``PrivateNetwork=true``): the textfile
works under it as it is; the HTTP endpoint needs the drop-in the README shows.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server, write_to_textfile

from chunkd import log
from chunkd.config import Settings
from chunkd.config.values import split_host_port
from chunkd.daemon.lanes import ClientLane
from chunkd.daemon.listing import DAMAGED, cached_summary
from chunkd.daemon.metrics import (
    ClientFigures,
    ClientLabels,
    DaemonFigures,
    build_registry,
)
from chunkd.daemon.progress import in_progress
from chunkd.daemon.state import ClientInfo
from chunkd.errors import ConfigError

#: How often the textfile is rewritten; node_exporter reads it at its own scrapes.
TEXTFILE_EVERY_S = 15.0


def client_figures(
    clients: Mapping[str, ClientInfo], labelled: Collection[str]
) -> tuple[int, dict[str, ClientFigures]]:
    """Every database's size on disk (one ``stat`` or two per client), and the ``list`` figures
    of the labelled clients (from the summary cache: a database is read only if it changed)."""
    total = 0
    per_client: dict[str, ClientFigures] = {}
    for client_id, info in clients.items():
        on_disk = 0
        for suffix in ("", "-wal", "-journal"):
            with contextlib.suppress(OSError):
                on_disk += os.stat(f"{info.db_path}{suffix}").st_size
        total += on_disk
        if client_id not in labelled:
            continue
        summary = cached_summary(info)
        if summary is None:
            continue  # damaged: chunkd_damaged_databases counts it
        per_client[client_id] = ClientFigures(
            stored_bytes=on_disk,
            plain_bytes=_int(summary.get("file_bytes")),
            rounds=_int(summary.get("round_count")),
        )
    return total, per_client


def daemon_figures(
    lanes: Sequence[ClientLane],
    labels: ClientLabels,
    *,
    ready: bool,
    retention_pending: int,
    open_databases: int,
    replica: Mapping[str, object] | None,
) -> DaemonFigures:
    """The gauges at a scrape: the lanes' counters in memory, a ``stat`` per database, the
    labelled clients' ``list`` figures (cached); no lock a restore needs."""
    infos = {
        lane.client_id: ClientInfo(lane.client_id, lane.directory, lane.db_path) for lane in lanes
    }
    stored_bytes, per_client = client_figures(infos, labels.labelled())
    return DaemonFigures(
        ready=ready,
        clients=len(lanes),
        queue_depth=sum(lane.queue_depth for lane in lanes),
        ingesting=len(in_progress()),
        retention_pending=retention_pending,
        open_databases=open_databases,
        damaged_databases=len(DAMAGED.snapshot()),
        stored_bytes=stored_bytes,
        replica=replica,
        per_client=per_client,
    )


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


class MetricsService:
    """The registry and whatever serves it; :meth:`start` raises ConfigError if it cannot."""

    def __init__(self, settings: Settings, figures: Callable[[ClientLabels], DaemonFigures]):
        self.settings = settings
        self.labels = ClientLabels(settings.metrics_client_labels)
        self.registry: CollectorRegistry
        self.registry, self._events = build_registry(lambda: figures(self.labels), self.labels)
        self._remove_tap: Callable[[], None] | None = None
        self._http: object | None = None
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.settings.metrics_addr or self.settings.metrics_textfile)

    def start(self) -> None:
        if not self.enabled:
            return
        self._remove_tap = log.add_tap(self._events.observe)
        if self.settings.metrics_addr:
            host, port = split_host_port(self.settings.metrics_addr) or ("", 0)  # checked
            try:
                self._http, _ = start_http_server(port, host, registry=self.registry)
            except OSError as e:
                raise ConfigError(
                    f"metrics_addr: cannot listen on {self.settings.metrics_addr}: {e.strerror}"
                ) from e
        if self.settings.metrics_textfile:
            self.write_textfile()  # fails now, naming the key, if the place is wrong
            self._writer = threading.Thread(
                target=self._write_loop, name="chunkd-metrics", daemon=True
            )
            self._writer.start()

    def write_textfile(self) -> None:
        """Write the textfile atomically (the library writes a temporary file and renames it)."""
        path = Path(self.settings.metrics_textfile)
        try:
            write_to_textfile(str(path), self.registry)
        except OSError as e:
            raise ConfigError(f"metrics_textfile: cannot write {path}: {e.strerror}") from e

    def _write_loop(self) -> None:
        logger = log.get_logger("chunkd.daemon")
        while not self._stop.wait(TEXTFILE_EVERY_S):
            try:
                self.write_textfile()
            except Exception as e:  # the directory went away, a figure failed:
                # say so and keep trying; this thread must not die with the metrics unwritten
                logger.warning(log.METRICS_FAILED, error=str(e))

    def stop(self) -> None:
        self._stop.set()
        if self._remove_tap is not None:
            self._remove_tap()
        if self._http is not None:
            self._http.shutdown()  # type: ignore[attr-defined]
            self._http.server_close()  # type: ignore[attr-defined]
        if self._writer is not None:
            self._writer.join(timeout=5)
