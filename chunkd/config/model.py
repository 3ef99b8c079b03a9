"""The validated configuration: :class:`Settings` and the tables inside it."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from chunkd.config.values import check_client_id


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """A client listed explicitly with ``[[clients]]``, beside those found under ``watch_root``."""

    id: str
    dir: Path


@dataclass(frozen=True, slots=True)
class ReplicaConfig:
    """The ``[replica]`` table (docs/REPLICA.md). Credentials are never here: boto3's standard
    chain (environment, ``~/.aws`` files, instance roles) supplies them."""

    url: str
    endpoint: str
    region: str
    host: str  # empty = the machine's host name, resolved by the daemon
    replica_keep_rounds: int  # 0 = as chunk_keep_rounds
    max_upload_rate: int  # bytes per second; 0 = unlimited
    prune_interval_s: float
    gc_grace_s: float


@dataclass(frozen=True, slots=True)
class Settings:
    """The validated configuration; every path in it is absolute.

    Values only: the daemon and the CLI read what they need and hand plain arguments to the engine
    (STYLE.md: engine functions never see Settings).
    """

    watch_root: Path
    client_dir_pattern: re.Pattern[str]
    file_patterns: tuple[str, ...]
    round_regex: re.Pattern[str]
    db_path: str
    socket: Path
    socket_group: str
    allowed_uids: tuple[int, ...]
    allowed_gids: tuple[int, ...]
    observer: str
    chunk_num: int
    max_chunk_bytes: int
    compression: str
    delta: bool
    #: raw chunks of recent ingests kept in memory (all clients), so linking rarely decodes
    delta_cache_bytes: int
    chunk_keep_rounds: int
    retention_interval_s: float
    rescan_interval_s: float
    settle_delay_s: float
    delete_after_ingest: bool
    log_format: str
    log_level: str
    clients: tuple[ClientConfig, ...]
    #: ``[replica]``: off-host copies on S3-compatible storage; None when the table is absent.
    replica: ReplicaConfig | None = None
    #: Prometheus metrics over HTTP (``host:port``) and/or as a textfile; empty = off.
    metrics_addr: str = ""
    metrics_textfile: str = ""
    #: clients past this many share the ``client="_other"`` label (bounded cardinality)
    metrics_client_labels: int = 100
    #: True only for the built-in defaults (no config file): ``chunkd serve`` may then create
    #: ``watch_root``, the quick start's convenience. A watch_root a config file names is never
    #: invented: a missing one is a typo or an unmounted filesystem, and the daemon refuses.
    #: Where the settings came from, not a setting: not a TOML key, and not compared.
    create_watch_root: bool = field(default=False, compare=False)

    def db_path_for(self, client_id: str, client_dir: Path) -> Path:
        """The database file of one client: ``db_path`` with ``{client}`` and ``{client_dir}``.

        ``db_path`` was validated at load time (only those two fields, absolute once filled in),
        so this cannot fail on the template. The id is checked here too, because it becomes part
        of a path: a directory matched by a loose ``client_dir_pattern`` could otherwise yield an
        id like ``..``. Raises RequestError for such an id.
        """
        check_client_id(client_id)
        return Path(self.db_path.format(client_dir=os.fspath(client_dir), client=client_id))
