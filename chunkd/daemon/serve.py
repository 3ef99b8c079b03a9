"""``chunkd serve``: start the daemon in order, run it until SIGTERM/SIGINT, stop it in reverse.

The order (socket first, so a second daemon is refused before it touches a database; then the
daemon's start-up scan; then the schedules; then ``READY=1``) and the stop are described in
:mod:`chunkd.daemon.service`, whose :class:`~chunkd.daemon.service.Daemon` this runs.
"""

from __future__ import annotations

import os
import signal
from types import FrameType

import structlog

from chunkd import __version__, log
from chunkd.config import Settings
from chunkd.daemon.directories import reading_group_warning
from chunkd.daemon.metrics_serve import MetricsService
from chunkd.daemon.scheduler import build_scheduler
from chunkd.daemon.service import Daemon
from chunkd.daemon.startup import report_startup_failure, startup_key
from chunkd.log import configure_logging


def run(settings: Settings) -> int:
    """``chunkd serve``: run until SIGTERM/SIGINT; the exit status for the CLI.

    A failure before ``READY=1`` is one log line (:func:`report_startup_failure`) naming the
    config key at fault, and exit status 78 when the configuration is the cause, so that systemd's
    ``RestartPreventExitStatus=78`` stops a restart loop that could never succeed.
    """
    from chunkd.daemon.server import Server

    configure_logging(settings.log_format, settings.log_level)
    logger = structlog.get_logger("chunkd.daemon")
    logger.info(
        log.DAEMON_STARTED,
        version=__version__,
        pid=os.getpid(),
        watch_root=str(settings.watch_root),
        socket=str(settings.socket),
    )
    try:
        daemon = Daemon(settings)
        server = Server(daemon)
        metrics = MetricsService(settings, daemon.figures)  # README "Metrics"; off by default
    except Exception as e:  # e.g. no inotify instance left: still one line and a status
        return report_startup_failure(e)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        daemon.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    scheduler = None
    try:
        try:
            with startup_key("socket"):
                # BusyError if a live daemon owns the socket: refuse before touching databases
                server.start()
            # before the clients are added, so each has its series from the start; ConfigError
            # naming the key if the address or the file cannot be used
            metrics.start()
            daemon.start()
            exposed = reading_group_warning()  # tenants left in the daemon's group (issue 19)
            if exposed is not None:
                daemon.warnings.append(exposed)  # shown by chunkd status
                logger.warning(log.LAYOUT_UNSAFE, warning=exposed)
            scheduler = build_scheduler(
                retention_interval_s=settings.retention_interval_s,
                rescan_interval_s=settings.rescan_interval_s,
                run_retention=daemon._run_retention,
                run_rescan=daemon.request_rescan,
            )
            scheduler.start()
        except Exception as e:  # the start-up boundary: every failure is one line and a status
            return report_startup_failure(e)
        daemon.notify_ready()
        logger.info(log.DAEMON_READY, clients=len(daemon.clients()), socket=str(settings.socket))
        daemon.run_forever()
        logger.info(log.DAEMON_STOPPING)
    finally:
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        server.stop()
        metrics.stop()
        daemon.shutdown()
    logger.info(log.DAEMON_STOPPED)
    return 0
