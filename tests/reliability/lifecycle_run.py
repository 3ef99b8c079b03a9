"""One lifecycle sequence through a real ``chunkd serve`` (and a real SeaweedFS): the actions.

:class:`Sequence` plays a :class:`~.lifecycle.Plan` against the daemon and checks the oracle after
every action. A reader thread (restores of listed versions, ``verify``) runs the whole time, so
retention always works under readers. Waits are event-driven: the daemon's JSON log, ``list``
and ``status`` answers, polled with a deadline; the only sleeps are the jobs' own pacing.
Every check names the SPEC sentence it enforces; a violation is appended to ``failures``.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .conftest import DaemonProcess, LogTail, request, run_cli
from .lifecycle import (
    PENDING,
    STORED,
    SUPERSEDED,
    UNOBSERVABLE,
    Job,
    Oracle,
    Plan,
    Version,
    write_file,
)

SETTLE_S = 60.0
REPLICA_S = 15.0
#: answers a concurrent reader may get: the round went (retention, between its list and restore)
READER_OK_CODES = frozenset({"not_found"})


class Sequence:
    def __init__(self, plan: Plan, root: Path, weed: Any = None, prefix: str = "") -> None:
        self.plan, self.root, self.weed = plan, root, weed
        self.rng = random.Random(plan.seed * 7919 + 1)
        self.reader_rng = random.Random(
            plan.seed * 7919 + 2
        )  # the thread's own: replays stay exact
        self.oracle = Oracle()
        self.failures: list[str] = []
        self.stats: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()  # wall time per action kind
        self.keep, self.delete, self.delta = plan.keep, plan.delete_after_ingest, plan.delta
        self.bucket_url = f"s3://chunkd-test/{prefix}" if weed is not None else ""
        self.jobs: dict[str, Job] = {}
        for n, style in enumerate(plan.styles):
            client = f"{style[:2]}{n}"
            job = Job(client, style, root / "fl" / f"client_{client}", 0, 24576 + 8192 * n)
            job.start_run(self.rng.randrange(1 << 30), 1)
            self.jobs[client] = job
        self.superseded_logged: Counter[Path] = Counter()
        self.last_stored: dict[str, Version] = {}
        self.daemon: DaemonProcess | None = None
        self.tail: LogTail | None = None
        self.reader_lock = threading.Lock()
        self.paused = True
        self.stopping = False
        self.reader = threading.Thread(target=self._read_forever, daemon=True)

    # -- the daemon ---------------------------------------------------------------------------
    def start(self) -> None:
        settings: dict[str, object] = {
            "settle_delay": "0.2s",
            "retention_interval": "0.3s",
            "rescan_interval": "2s",
            "chunk_keep_rounds": self.keep,
            "compression": "auto",
            "delta": self.delta,
            "chunk_num": 10,
            "max_chunk_bytes": "32KiB",
            "delete_after_ingest": self.delete,
        }
        self.root.mkdir(parents=True, exist_ok=True)
        self.daemon = DaemonProcess(self.root, settings)
        if self.weed is not None:
            with open(self.daemon.config, "a") as f:
                f.write(
                    f'\n[replica]\nurl = "{self.bucket_url}"\nendpoint = "{self.weed.endpoint}"\n'
                    f'host = "lc"\nreplica_keep_rounds = {self.plan.replica_keep}\n'
                    'prune_interval = "2s"\ngc_grace = "0s"\n'
                )
        for job in self.jobs.values():  # client directories exist before the daemon starts
            job.directory.mkdir(parents=True, exist_ok=True)
        if self.tail is None:
            self.tail = LogTail(self.daemon.log_path)
        self.daemon.start()
        self.paused = False

    def pause(self) -> None:
        """No reader request in flight from here until :meth:`resume` (kills, exact checks)."""
        with self.reader_lock:
            self.paused = True

    def stop(self, sig: int = signal.SIGTERM) -> None:
        assert self.daemon is not None
        self.pause()
        code = self.daemon.stop(sig)
        if sig == signal.SIGKILL:  # versions written so far may be committed without a log line
            self.killed_upto = len(self.oracle.versions)
        if sig == signal.SIGTERM and code != 0:  # SPEC systemd: on SIGTERM ... nothing lost
            self.fail(f"SIGTERM stop exited {code}")
        self.process_events()

    def fail(self, message: str) -> None:
        """Record a violation once (the same one seen again at a later check adds nothing)."""
        if message not in self.failures:
            self.failures.append(message)

    # -- the log: the oracle learns what the daemon did ----------------------------------------
    def process_events(self) -> None:
        assert self.tail is not None
        for e in self.tail.new_events():
            event = e.get("event")
            if event == "checkpoint.superseded":
                self.superseded_logged[Path(str(e.get("path")))] += 1
            elif event == "checkpoint.rejected":
                self.fail(f"checkpoint.rejected for a valid checkpoint: {e}")
            elif event in ("checkpoint.ingested", "checkpoint.duplicate"):
                self._took(e)
            elif event == "retention.pruned":
                self.stats["retention_passes_removing"] += bool(e.get("rounds_removed"))

    def _took(self, e: dict[str, Any]) -> None:
        path, digest = Path(str(e.get("path"))), e.get("sha256")
        match = [v for v in self.oracle.versions if v.path == path and v.sha256 == digest]
        if not match:
            self.fail(f"{e.get('event')} of content never written: {path.name} {digest}")
            return
        v = match[0]
        if e["event"] == "checkpoint.duplicate":
            if v.state != STORED:  # every version's content is new: never a duplicate
                self.fail(f"{path.name} (version #{v.vid}) taken as a duplicate, never stored")
            return
        if v.state == STORED:  # SPEC Watching: nothing already ingested is ingested twice
            self.fail(f"{path.name} (version #{v.vid}) ingested twice")
            return
        # SPEC Rounds: the number in the name, else cur_round, else highest stored + 1
        expected = v.round_num
        # A version overwritten while the daemon was down may still have been committed just
        # before a SIGKILL cut its log line, taking a sequence number the oracle never saw: each
        # such version of this client allows one number more (SPEC: "one more than the client's
        # highest stored round", and that round may have been stored unseen).
        unseen = 0
        if expected is None:
            expected = self.oracle.next_sequence_round(v.client)
            last = max((u.vid for u in self.oracle.of(v.client, STORED)), default=-1)
            unseen = sum(
                1
                for u in self.oracle.of(v.client, UNOBSERVABLE)
                if u.round_num is None and last < u.vid < v.vid
            )
        taken = e.get("round")
        if isinstance(taken, int) and expected < taken <= expected + unseen:
            expected = taken
        if taken != expected:
            self.fail(
                f"{path.name} (version #{v.vid}) stored as round {e.get('round')}, "
                f"SPEC gives {expected}"
            )
        v.round_num = int(e["round"])  # type: ignore[arg-type]
        v.state = STORED
        v.deletable = self.delete
        self.last_stored[v.client] = v
        self.stats["versions_stored"] += 1
        # SPEC Retention runs on a schedule, so it may have run right after this ingest: what it
        # would let go in this state may be gone from now on (never required again).
        self.oracle.settle_retention(v.client, self.keep)

    def settle(self) -> None:
        """Wait until every pending version is stored (SPEC Watching: every complete file is
        taken, also those written while the daemon was down)."""
        assert self.daemon is not None
        deadline = time.monotonic() + SETTLE_S
        next_listing = time.monotonic() + 2.0
        while True:
            self.process_events()
            pending = [v for v in self.oracle.versions if v.state == PENDING]
            if not pending:
                return
            if time.monotonic() > next_listing:  # a SIGKILL may fall between commit and log line
                next_listing = time.monotonic() + 2.0
                self._stored_but_unlogged(pending)
            proc = self.daemon.proc
            if proc is not None and proc.poll() is not None:
                self.fail(f"daemon exited with {proc.returncode} with {len(pending)} files pending")
                raise _Abort
            if time.monotonic() > deadline:
                names = ", ".join(f"{v.path.name}#{v.vid}" for v in pending)
                self.fail(f"not taken within {SETTLE_S} s: {names}")
                raise _Abort
            time.sleep(0.05)

    def _stored_but_unlogged(self, pending: list[Version]) -> None:
        """A version ``list`` shows although no log line said so: the daemon was killed between
        its commit and its log line (SPEC Logs: each line flushed as written, not atomically
        with the commit). It counts as stored, at the round the store gives it."""
        for client in {v.client for v in pending}:
            rounds = {digest: r for (r, digest) in self.listed(client)}
            for v in pending:
                if v.client == client and v.sha256 in rounds:
                    self._took(
                        {
                            "event": "checkpoint.ingested",
                            "path": str(v.path),
                            "sha256": v.sha256,
                            "round": rounds[v.sha256],
                        }
                    )
                    self.stats["stored_without_log_line"] += 1
            self._stored_and_pruned_unseen(client, [v for v in pending if v.client == client])

    def _stored_and_pruned_unseen(self, client: str, pending: list[Version]) -> None:
        """A version written before a SIGKILL may have been committed (its log line cut) and then
        removed by retention before any listing saw it: accepted when SPEC's retention, with it
        stored at its round, lets it go now (SPEC Retention; nothing else may vanish)."""
        for v in pending:
            if v.state != PENDING or v.vid >= getattr(self, "killed_upto", 0):
                continue
            if v.round_num is None or v.sha256 in {d for (_, d) in self.listed(client)}:
                continue
            v.state = STORED
            if v.vid in self.oracle.spec_keep(client, self.keep):
                v.state = PENDING  # SPEC would keep it: it must still arrive
                continue
            self.oracle.retired.add(v.vid)
            self.stats["stored_and_pruned_unseen"] += 1

    # -- the jobs ---------------------------------------------------------------------------------
    def write_round(self, job: Job, *, up: bool = True) -> Version:
        job.fedavg_step()
        round_num = job.next_round
        job.next_round += 1
        path = job.directory / job.file_name(round_num)
        data = job.payload(round_num)
        for v in self.oracle.versions:  # overwritten while no daemon ran: it cannot know
            if v.path == path and v.state == PENDING and not up:
                v.state = UNOBSERVABLE
        v = self.oracle.record(
            job, path, round_num if job.numbered_by_name else None, data, time.time()
        )
        write_file(path, data, atomic=job.style != "nvflare" and self.rng.random() < 0.7)
        self.stats["files_written"] += 1
        return v

    def new_run(self, job: Job, first_round: int) -> None:
        """A restart or rerun into the same directory: SPEC's new run, newer than every earlier
        one (NVFlare's one overwritten file has no round numbers to start again: same run)."""
        if job.numbered_by_name:
            job.run = 1 + max((v.run for v in self.oracle.of(job.client)), default=job.run)
        job.start_run(self.rng.randrange(1 << 30), first_round)

    # -- the reader thread: retention always runs under readers ------------------------------------
    def _read_forever(self) -> None:
        while not self.stopping:
            with self.reader_lock:
                if not self.paused:
                    try:
                        self._read_once()
                    except Exception as e:  # a dropped connection while running is a failure too
                        self.fail(f"reader: {type(e).__name__}: {e}")
            time.sleep(0.1)

    def _read_once(self) -> None:
        assert self.daemon is not None
        if self.reader_rng.random() < 0.4:
            reply, _ = request(self.daemon.socket, {"cmd": "verify"}, 60)
            self.stats["reader_verifies"] += 1
            if not (reply.ok and reply.obj["result"].get("ok")):  # SPEC verify; issue 17 item 3
                self.fail(f"verify during retention reported damage: {reply.raw[:600]!r}")
            return
        client = self.reader_rng.choice(sorted(self.jobs))
        listed = self.listed(client)
        if not listed:
            return
        (round_num, digest), generation = self.reader_rng.choice(sorted(listed.items()))
        req = {"cmd": "restore", "client": client, "round": round_num, "transfer": "frames"}
        req["generation"] = generation
        reply, payload = request(self.daemon.socket, req, 60)
        self.stats["reader_restores"] += 1
        if not reply.ok:
            if reply.code not in READER_OK_CODES:  # issue 17 item 4: never `internal`
                self.fail(
                    f"concurrent restore of {client} r{round_num} g{generation}: "
                    f"{reply.raw[:400]!r}"
                )
        elif payload is not None and hashlib.sha256(payload).hexdigest() != digest:
            written = {v.sha256 for v in self.oracle.versions if v.client == client}
            if hashlib.sha256(payload).hexdigest() not in written:
                self.fail(f"concurrent restore of {client} r{round_num}: bytes never written")

    def listed(self, client: str) -> dict[tuple[int, str], int]:
        """``list``: every stored version as (round, sha256) -> generation."""
        assert self.daemon is not None
        reply, _ = request(self.daemon.socket, {"cmd": "list", "client": client}, 60)
        assert reply.ok, reply.raw
        (entry,) = reply.obj["result"]["clients"]
        if entry.get("error"):
            self.fail(f"list: client {client} reported damaged: {entry['error']}")
        versions = list(entry.get("rounds", [])) + list(entry.get("generations", []))
        return {(r["round"], r["sha256"]): int(r.get("generation", 0)) for r in versions}

    def restore(
        self, client: str, round_num: int | str, generation: int | None = None
    ) -> tuple[Any, str | None]:
        assert self.daemon is not None
        req: dict[str, object] = {
            "cmd": "restore",
            "client": client,
            "round": round_num,
            "transfer": "frames",
        }
        if generation is not None:
            req["generation"] = generation
        reply, payload = request(self.daemon.socket, req, 60)
        self.stats["restores_checked"] += 1
        digest = hashlib.sha256(payload).hexdigest() if reply.ok and payload is not None else None
        return reply, digest

    # -- the checks --------------------------------------------------------------------------
    def check(self, *, exact: bool = False) -> None:
        """After the store caught up: the oracle's invariants for every client."""
        self.settle()
        for client in sorted(self.jobs):
            self._check_client(client, exact)
        self.stats["checks"] += 1

    def _check_client(self, client: str, exact: bool) -> None:
        must = self.oracle.settle_retention(client, self.keep)
        listed = self.listed(client)
        for vid in sorted(must):
            v = self.oracle.versions[vid]
            where = (
                f"client {client} round {v.round_num} (run {v.run}, file #{v.vid} {v.path.name})"
            )
            generation = listed.get((v.round_num, v.sha256))  # type: ignore[arg-type]
            if generation is None:
                # SPEC Rounds: "no stored round is ever lost except by retention"; SPEC Retention:
                # "keeps the newest N rounds of each client in that order (run, round)"
                self.fail(f"{where}: gone, but SPEC's retention keeps it (keep={self.keep})")
                continue
            reply, digest = self.restore(client, v.round_num, generation)  # type: ignore[arg-type]
            if digest != v.sha256:  # SPEC: restores any stored round byte-identical
                self.fail(f"{where} g{generation}: restore gave {digest} ({reply.raw[:200]!r})")
        latest = self.oracle.latest(client)
        if latest is not None:  # SPEC Rounds: `latest` is the round most recently written
            reply, digest = self.restore(client, "latest")
            if digest != latest.sha256:
                got = reply.obj.get("result", {}).get("round") if reply.ok else reply.raw[:200]
                self.fail(
                    f"client {client}: latest answered round {got}, but the newest written is "
                    f"round {latest.round_num} (run {latest.run}, file #{latest.vid})"
                )
        if exact:  # right after `chunkd prune`: SPEC Retention "older versions go"
            allowed = self.oracle.spec_keep(client, self.keep)
            if client in self.last_stored:  # "the round just ingested is never removed by it"
                allowed.add(self.last_stored[client].vid)
            keys = {
                (self.oracle.versions[i].round_num, self.oracle.versions[i].sha256) for i in allowed
            }
            extra = sorted(k[0] for k in listed if k not in keys)
            if extra:
                self.fail(
                    f"client {client}: after prune (keep={self.keep}) still holds rounds {extra}"
                )
        self._check_files(client)

    def _check_files(self, client: str) -> None:
        by_path: dict[Path, Version] = {}
        for v in self.oracle.of(client):
            by_path[v.path] = v
        for path, v in by_path.items():
            if not path.exists() and not (v.state == STORED and v.deletable):
                # SPEC Watching: never deletes the client's file unless delete_after_ingest,
                # and then only after the stored round restores byte-identical
                self.fail(f"client {client}: {path.name} (file #{v.vid}, {v.state}) vanished")
        for path in by_path:
            lost = [v for v in self.oracle.of(client, SUPERSEDED) if v.path == path]
            if len(lost) > self.superseded_logged[path]:  # issue 17 item 7: none vanish unlogged
                self.fail(
                    f"client {client}: {len(lost)} versions of {path.name} overwritten before "
                    f"they settled, {self.superseded_logged[path]} logged checkpoint.superseded"
                )

    def replica_expected(self, client: str) -> list[Version]:
        """SPEC [replica]: the newest replica_keep_rounds (0 = as chunk_keep_rounds) rounds, in
        the same order as local retention (run, then round)."""
        k = self.plan.replica_keep or self.keep
        if self.keep:
            k = min(k, self.keep) if k else self.keep
        return [
            v for v in self.oracle.newest_current(client, k) if v.vid not in self.oracle.retired
        ]

    def check_replica(self) -> None:
        """Once ``status`` says the bucket lags by 0 rounds, it holds the newest rounds."""
        assert self.daemon is not None
        self.settle()
        deadline = time.monotonic() + REPLICA_S
        missing: list[str] = []
        lag: object = None
        while time.monotonic() < deadline:
            reply, _ = request(self.daemon.socket, {"cmd": "status"}, 30)
            lag = reply.obj["result"].get("replica", {}).get("lag_rounds")
            if lag == 0:
                missing = self._bucket_missing()
                if not missing:
                    self.stats["replica_checks"] += 1
                    self.seconds["replica_wait"] += REPLICA_S - (deadline - time.monotonic())
                    return
            time.sleep(0.5)
        if lag == 0:  # SPEC [replica]: "status's lag counts what the bucket lacks"
            self.fail(f"status lag_rounds 0 but the bucket lacks {missing}")
        else:
            self.fail(f"replica lag_rounds {lag} after {REPLICA_S} s; bucket lacks {missing}")

    def bucket_cli(self, *args: str) -> Any:
        assert self.weed is not None
        return run_cli(
            *args, "--replica", self.bucket_url, "--endpoint", self.weed.endpoint, "--host", "lc"
        )

    def _bucket_missing(self) -> list[str]:
        """What the bucket lacks of :meth:`replica_expected` (listed as `list --replica` does,
        in process: a CLI start per poll would cost more than the wait)."""
        from chunkd.errors import NotFoundError
        from chunkd.replica.fetch import list_rounds, read_manifest

        bucket = self._bucket()
        missing = []
        for client in sorted(self.jobs):
            held = set()
            for r in list_rounds(bucket, host="lc", client_id=client):
                try:
                    manifest = read_manifest(bucket, "lc", client, r.round_num)
                except NotFoundError:  # replica retention removed it since the listing
                    continue
                held.add((r.round_num, manifest.file_sha256))
            expected = [
                v for v in self.replica_expected(client) if (v.round_num, v.sha256) not in held
            ]
            local = self.listed(client) if expected and self._daemon_up() else {}
            missing += [
                f"{client} r{v.round_num} (run {v.run}, file #{v.vid}"
                + (", held locally)" if (v.round_num, v.sha256) in local else ")")
                for v in expected
            ]
        return missing

    def _daemon_up(self) -> bool:
        return (
            self.daemon is not None
            and self.daemon.proc is not None
            and self.daemon.proc.poll() is None
        )

    def host_loss(self) -> None:
        """The host is lost: its databases are deleted; every round the bucket must hold
        restores byte-identical from the bucket alone (in process, as ``restore --replica``
        does; the CLI itself restores ``latest`` of one client, the user's surface)."""
        from chunkd.replica.fetch import restore_from_replica

        self.check_replica()
        self.stop()
        bucket = self._bucket()
        for client, job in sorted(self.jobs.items()):
            for p in job.directory.glob(f"client_{client}_chunks.db*"):
                p.unlink()
            for v in self.replica_expected(client):
                digest = hashlib.sha256()
                try:
                    restore_from_replica(bucket, "lc", client, v.round_num, digest.update)
                    got: str | None = digest.hexdigest()
                except Exception as e:
                    got = f"{type(e).__name__}: {e}"
                self.stats["replica_restores"] += 1
                if got != v.sha256:
                    self.fail(f"bucket restore {client} r{v.round_num} (run {v.run}): {got}")
        client = sorted(self.jobs)[0]
        latest = self.oracle.latest(client)
        if latest is None or not self.replica_expected(client):
            return
        out = self.root / "restored.pth"
        done = self.bucket_cli("restore", "--client", client, "--round", "latest", "-o", str(out))
        got = hashlib.sha256(out.read_bytes()).hexdigest() if done.returncode == 0 else None
        if got != latest.sha256:  # SPEC Rounds: `latest` is the round most recently written
            self.fail(
                f"restore --replica {client} latest: not round {latest.round_num} "
                f"(run {latest.run}, file #{latest.vid}): {done.stderr[-200:]!r}"
            )
        out.unlink(missing_ok=True)

    def _bucket(self) -> Any:
        from chunkd.replica.bucket import Bucket
        from chunkd.replica.layout import ReplicaURL

        assert self.weed is not None
        return Bucket(ReplicaURL.parse(self.bucket_url), endpoint=self.weed.endpoint)

    def cleanup(self) -> None:
        self.stopping = True
        self.pause()
        if (
            self.daemon is not None
            and self.daemon.proc is not None
            and self.daemon.proc.poll() is None
        ):
            self.daemon.proc.kill()
            self.daemon.proc.wait()
        shutil.rmtree(self.root / "fl", ignore_errors=True)


class _Abort(Exception):
    """The sequence cannot go on (the daemon died, or a file was never taken)."""
