"""Fixtures shared by the engine tests: a writer store in ``tmp_path`` and the engine's calls.

Kept free of torch so that collecting the pure unit tests stays fast; the checkpoint builders
live in ``tests/strategies.py``.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import io
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from chunkd.deltas import RECENT
from chunkd.ingest import IngestOptions, IngestResult, ingest_file
from chunkd.restore import restore_round
from chunkd.store import ChunkStore

# -- long campaigns: `make test` leaves them to `make torture` (issue 10, item 11) ---------------

#: Tests whose short form alone takes a minute or more on a loaded 2-core machine (measured with
#: ``--durations``: the SIGKILL campaign ~100 s, the inotify overflow burst ~45 s). They are
#: marked ``campaign``; ``make test`` deselects them (``-m "not campaign"``), ``make torture`` and
#: ``make campaign`` run them.
LONG_CAMPAIGNS: frozenset[str] = frozenset(
    {"test_sigkill_campaign", "test_inotify_overflow_burst_is_caught_up_exactly_once"}
)


#: torch (its optimizers load torch._dynamo) creates /tmp/torchinductor_<user> on first use and
#: never removes it: point it into a scratch directory this session removes (daemons and other
#: subprocesses inherit the setting).
_SCRATCH = Path(tempfile.mkdtemp(prefix="chunkd-tests-"))
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(_SCRATCH / "torchinductor"))


def _leave_nothing_in_tmp() -> None:
    """Leave nothing in /tmp: the scratch directory, and pytest's own per-user parent directory
    once it is empty (runs at unconfigure, after pytest removed a passed run's directories)."""
    shutil.rmtree(_SCRATCH, ignore_errors=True)
    parent = Path(tempfile.gettempdir()) / f"pytest-of-{getpass.getuser()}"
    with contextlib.suppress(OSError):  # only if empty: failed runs' and others' directories stay
        parent.rmdir()


def pytest_configure(config: pytest.Config) -> None:
    config.add_cleanup(_leave_nothing_in_tmp)
    config.addinivalue_line(
        "markers", "campaign: a long reliability campaign; make test skips it, make torture runs it"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if getattr(item, "originalname", item.name) in LONG_CAMPAIGNS:
            item.add_marker(pytest.mark.campaign)


@dataclass(frozen=True)
class Fingerprint:
    """Everything a rejected file must leave unchanged in a database."""

    rounds: tuple[int, ...]
    chunk_rows: int
    metadata_rows: int
    file_sha256: str


class Engine:
    """The engine calls the tests repeat, with small defaults; no state."""

    @staticmethod
    def options(
        chunk_num: int = 10,
        max_chunk_bytes: int = 1 << 20,
        compression: str = "none",
        delta: bool = False,
    ) -> IngestOptions:
        """Raw chunks unless asked: these tests read ``chunk_data`` as the seed does."""
        return IngestOptions(
            chunk_num=chunk_num,
            max_chunk_bytes=max_chunk_bytes,
            compression=compression,
            delta=delta,
        )

    @classmethod
    def ingest(
        cls, path: os.PathLike[str] | str, store: ChunkStore, **options: object
    ) -> IngestResult:
        return ingest_file(path, store, cls.options(**options))  # type: ignore[arg-type]

    @staticmethod
    def restore(store: ChunkStore, round_num: int) -> bytes:
        buf = io.BytesIO()
        result = restore_round(store, round_num, buf.write)
        data = buf.getvalue()
        assert result.bytes_written == len(data)
        assert result.file_sha256 == hashlib.sha256(data).hexdigest()
        return data

    @staticmethod
    def sha256(data: bytes | os.PathLike[str]) -> str:
        if not isinstance(data, bytes):
            data = Path(data).read_bytes()
        return hashlib.sha256(data).hexdigest()

    @staticmethod
    def query(db: os.PathLike[str], sql: str, params: tuple[object, ...] = ()) -> list[tuple]:
        """Run ``sql`` on its own read-only connection (what any other reader would see)."""
        conn = sqlite3.connect(f"{Path(db).resolve().as_uri()}?mode=ro", uri=True)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    @classmethod
    def orphan_chunks(cls, db: os.PathLike[str]) -> int:
        """Stored chunks that no round version needs (referenced, or a base of a needed delta),
        and ``chunk_data`` rows without their ``chunk_info`` row."""
        with ChunkStore.open_reader(db) as store:
            dead = store.orphan_chunk_count()
        unlisted = cls.query(
            db,
            "SELECT COUNT(*) FROM chunk_data WHERE chunk_hash NOT IN"
            " (SELECT chunk_hash FROM chunk_info)",
        )[0][0]
        return dead + unlisted

    @classmethod
    def fingerprint(cls, db: os.PathLike[str]) -> Fingerprint:
        rounds = tuple(r for (r,) in cls.query(db, "SELECT round_num FROM rounds ORDER BY 1"))
        chunks = cls.query(db, "SELECT COUNT(*) FROM chunk_data")[0][0]
        metadata = cls.query(db, "SELECT COUNT(*) FROM chunk_metadata")[0][0]
        return Fingerprint(rounds, chunks, metadata, cls.sha256(db))


@pytest.fixture(autouse=True)
def _fresh_recent_cache() -> Iterator[None]:
    """The process-wide cache of recently ingested raw chunks starts empty in every test: a
    restore served from it would not see damage a test made on disk."""
    RECENT.clear()
    yield
    RECENT.clear()


@pytest.fixture(scope="session")
def engine() -> type[Engine]:
    return Engine


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "client_1_chunks.db"


class HookedPool(ThreadPoolExecutor):
    """A real hashing pool for ``ingest_file(pool=...)`` that calls ``hook(n)`` at its n-th
    submission. ``ingest_file`` submits each chunk's hash while the round is being written, so
    a hook runs in the middle of an ingest: to look at the database, or to change the file."""

    def __init__(self, hook: Callable[[int], None]) -> None:
        super().__init__(max_workers=2, thread_name_prefix="test-hash")
        self.hook, self.calls = hook, 0

    def submit(self, fn, /, *args, **kwargs):
        self.calls += 1
        self.hook(self.calls)
        return super().submit(fn, *args, **kwargs)


@pytest.fixture
def hooked_pool() -> Iterator[Callable[[Callable[[int], None]], HookedPool]]:
    """Make :class:`HookedPool` instances, shut down after the test."""
    pools: list[HookedPool] = []

    def make(hook: Callable[[int], None]) -> HookedPool:
        pools.append(HookedPool(hook))
        return pools[-1]

    yield make
    for pool in pools:
        pool.shutdown()


@pytest.fixture
def writer_store(db_path: Path) -> Iterator[ChunkStore]:
    """A fresh writer store (``client_1_chunks.db`` in ``tmp_path``), closed after the test."""
    store = ChunkStore.open_writer(db_path)
    try:
        yield store
    finally:
        store.close()
