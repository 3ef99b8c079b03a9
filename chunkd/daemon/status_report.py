"""The ``status`` answer: per-client figures from the lanes' in-memory stats, and the totals.

O(clients) in memory only: no database is opened, so ``chunkd status`` stays quick at 10,000
clients (issue 20). The keys are the protocol's (docs/PROTOCOL.md, ``status``); their order here
is the order the answer shows them in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chunkd.daemon.lanes import ClientLane
from chunkd.daemon.state import ErrorLedger


def status_report(
    lanes: Mapping[str, ClientLane],
    ledgers: Mapping[str, ErrorLedger],
    *,
    head: dict[str, object],
    tail: dict[str, object],
) -> dict[str, object]:
    """``head`` (the daemon's identity), then the clients' totals, the newest ingest and error
    of any client, ``tail`` (the daemon's other figures), and the per-client table."""
    per_client: dict[str, dict[str, Any]] = {}
    last_ingest: dict[str, Any] | None = None
    last_error: dict[str, Any] | None = None
    for cid, lane in sorted(lanes.items()):
        st = lane.stats
        ledger = ledgers.get(cid) or ErrorLedger()
        per_client[cid] = {
            "dir": str(lane.directory),
            "db": str(lane.db_path),
            "queue_depth": lane.queue_depth,
            "ingested": st.ingested,
            "duplicates": st.duplicates,
            "rejected": st.rejected,
            "superseded": st.superseded,
            "errors": ledger.errors,
            "last_ingest": st.last_ingest,
            "last_error": ledger.last_error,
        }
        if st.last_ingest and (last_ingest is None or st.last_ingest["at"] > last_ingest["at"]):
            last_ingest = {"client": cid, **st.last_ingest}
        error = ledger.last_error
        if error and (last_error is None or error["at"] > last_error["at"]):
            last_error = {"client": cid, **error}
    totals = {
        key: sum(c[key] for c in per_client.values())
        for key in ("queue_depth", "ingested", "rejected", "superseded", "errors")
    }
    return {
        **head,
        "clients_watched": len(lanes),
        **totals,
        "last_ingest": last_ingest,
        "last_error": last_error,
        **tail,
        "clients": per_client,
    }
