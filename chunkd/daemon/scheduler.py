"""The daemon's schedules (APScheduler 3.x): retention and the reconciliation scan.

Jobs only enqueue work: retention queues a prune on every client's lane, the reconciliation scan
asks the service's main thread to rescan. Neither opens a database, so a job never waits on a
writer and never runs long on the scheduler's threads.

``coalesce=True`` folds runs missed while the process was stopped or busy into one;
``max_instances=1`` never stacks a job on itself; ``misfire_grace_time=None`` runs a late job
however late, instead of silently dropping it.
"""

from __future__ import annotations

from collections.abc import Callable

from apscheduler.executors.pool import ThreadPoolExecutor as JobExecutor
from apscheduler.schedulers.background import BackgroundScheduler

JOB_DEFAULTS = {"coalesce": True, "max_instances": 1, "misfire_grace_time": None}


def build_scheduler(
    *,
    retention_interval_s: float,
    rescan_interval_s: float,
    run_retention: Callable[[], None],
    run_rescan: Callable[[], None],
) -> BackgroundScheduler:
    scheduler = BackgroundScheduler(
        executors={"default": JobExecutor(max_workers=2)},
        job_defaults=JOB_DEFAULTS,
        timezone="UTC",
        daemon=True,
    )
    scheduler.add_job(
        run_retention, "interval", seconds=retention_interval_s, id="retention", name="retention"
    )
    scheduler.add_job(
        run_rescan, "interval", seconds=rescan_interval_s, id="rescan", name="reconciliation scan"
    )
    return scheduler
