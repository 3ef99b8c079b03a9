"""The ``make bench`` section of :mod:`benchmarks.many_clients`: issue 20's targets beside the
figures (kept out of benchmarks/report.py, and out of the measuring module)."""

from __future__ import annotations

from collections.abc import Callable

from benchmarks.many_clients import (
    BURST_MIN,
    FDS_MAX,
    IDLE_CPU_MAX,
    LIST_MAX_S,
    QUICK_CLI_MAX_S,
    RSS_MAX_KIB,
    STARTUP_MAX_S,
    THREADS_MAX,
    Result,
)


def _status(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def _get(d: object, *path: str) -> object:
    for key in path:
        d = d.get(key) if isinstance(d, dict) else None
    return d


def target_rows(r: Result) -> list[list[str]]:
    n = int(r.get("clients", 0))  # type: ignore[call-overload]
    rows: list[list[str]] = []
    one, two = r.get("round1_ingested"), r.get("round2_ingested")
    dbs = _get(r, "databases", "complete")
    twice = r.get("ingested_twice")
    ok = None if dbs is None else (one == n and two == n and dbs == n and twice == 0)
    rows.append(
        [
            "every file of both rounds ingested once",
            f"{n:,} + {n:,}",
            f"log: {one} + {two} ({twice} twice); databases with rounds [1, 2]: {dbs}",
            _status(ok),
        ]
    )

    def row(
        what: str, threshold: str, value: object, fmt: str, ok: Callable[[float], bool]
    ) -> None:
        if isinstance(value, int | float):
            rows.append([what, threshold, format(value, fmt), _status(ok(float(value)))])
        else:
            rows.append([what, threshold, "not measured", _status(None)])

    row(
        "burst of round 2 to every client",
        f">= {BURST_MIN:.0f} files/s",
        r.get("burst_files_per_s"),
        ",.0f",
        lambda v: v >= BURST_MIN,
    )
    row(
        "daemon threads",
        f"<= {THREADS_MAX}",
        _get(r, "after_rounds", "threads"),
        ",d",
        lambda v: v <= THREADS_MAX,
    )
    row(
        "open file descriptors",
        f"<= {FDS_MAX:,}",
        _get(r, "after_rounds", "fds"),
        ",d",
        lambda v: v <= FDS_MAX,
    )
    rss = _get(r, "after_rounds", "rss_anon_kib")
    row(
        "RssAnon after both rounds (MiB)",
        f"<= {RSS_MAX_KIB >> 10}",
        rss / 1024 if isinstance(rss, int) else None,
        ".0f",
        lambda v: v * 1024 <= RSS_MAX_KIB,
    )
    row(
        f"idle CPU afterwards (% of a core, {r.get('idle_s')} s)",
        f"< {IDLE_CPU_MAX}",
        _get(r, "idle_cpu", "percent_of_core"),
        ".2f",
        lambda v: v < IDLE_CPU_MAX,
    )
    for key, label, limit in (
        ("status", "`status`", QUICK_CLI_MAX_S),
        ("list_client", "`list --client ID`", QUICK_CLI_MAX_S),
        ("list", "`list`", LIST_MAX_S),
    ):
        row(
            f"{label} wall time (s)",
            f"< {limit:g}",
            _get(r, "cli", key, "seconds"),
            ".2f",
            lambda v, limit=limit: v < limit,
        )
    row(
        "start-up scan to `daemon.ready` (s)",
        f"<= {STARTUP_MAX_S:.0f}",
        r.get("startup_to_ready_s"),
        ".1f",
        lambda v: v <= STARTUP_MAX_S,
    )
    return rows


def render(r: object) -> str:
    """The ``make bench`` section (kept out of benchmarks/report.py)."""
    if not isinstance(r, dict):
        return ""
    head = [
        "",
        f"## {int(r.get('clients', 0)):,} clients on one daemon (issue 20; "
        "`python -m benchmarks.many_clients`)",
        "",
    ]
    if "clients" not in r or ("error" in r and "databases" not in r):
        return "\n".join([*head, f"Not measured: {r.get('error')}", ""])
    lines = [
        f"Each client directory holds one {r.get('file_bytes')} B `torch.save` round at start-up; "
        "round 2 is then written to all. Product defaults (schedules included), JSON log. "
        f"Start-up to all round-1 files ingested: {_fmt(r.get('round1_done_s'))} s; "
        f"writing round 2 took {_fmt(r.get('round2_write_s'))} s.",
        "",
        "| target | threshold | measured | status |",
        "|---|---|---|---|",
        *("| " + " | ".join(row) + " |" for row in target_rows(r)),
        "",
    ]
    extra = []
    if r.get("error"):
        extra.append(f"- stopped early: {r['error']} (timeout {r.get('timeout_s')} s)")
    for key, e in (_get(r, "cli") or {}).items():  # type: ignore[union-attr]
        if isinstance(e, dict) and e.get("error"):
            extra.append(f"- `{key}` failed: {e['error']}")
    if r.get("failure_count"):
        extra.append(f"- {r['failure_count']} rejected/failed ingests, first: {r.get('failures')}")
    stuck = r.get("at_timeout")
    if isinstance(stuck, dict):
        extra.append(
            f"- when stopped: {stuck['threads']} threads, {stuck['fds']} fds, "
            f"RssAnon {stuck['rss_anon_kib'] / 1024:.0f} MiB"
        )
    after = r.get("after_cli")
    if isinstance(after, dict):
        extra.append(
            f"- after the CLI calls: {after['threads']} threads, {after['fds']} fds, "
            f"RssAnon {after['rss_anon_kib'] / 1024:.0f} MiB"
        )
    metrics = r.get("metrics")
    if isinstance(metrics, dict) and metrics.get("seconds"):
        extra.append(
            f"- a Prometheus scrape (`metrics_addr`, issue 21): {metrics['series']:,} series, "
            f"{metrics['bytes'] / 1024:.0f} KiB, "
            + ", ".join(f"{t:.2f}" for t in metrics["seconds"])
            + " s (three in a row)"
        )
    return "\n".join([*head, *lines, *extra, ""])


def _fmt(x: object) -> str:
    return f"{x:.1f}" if isinstance(x, int | float) else "-"
