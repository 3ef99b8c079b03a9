"""The lifecycle campaign (issue 17): an operator's week, seeded, through a real daemon.

One *sequence* is one seeded :class:`~.lifecycle.Plan`: one or two FL clients (FederatedScope
``{r}.pth`` with ``cur_round``, Flower ``model_round_{r}.pth``, NVFlare ``FL_global_model.pt``
overwritten every round), FedAvg-like weights that all move every round, and a random list of
actions:

* ``write``: a job writes 1-4 more rounds;
* ``restart``: the job starts again from round 1 (same directory, same names, new content);
* ``rerun``: the job starts again from an earlier round with new seeds;
* ``kill_backlog``: a round is written, the daemon is SIGKILLed at a random moment (often inside
  that ingest), 1-4 rounds are written while it is down, it is started again;
* ``reconfigure``: clean stop, a new ``chunk_keep_rounds`` (0-5), ``delete_after_ingest`` and
  ``delta`` toggled at times, start again;
* ``prune``: ``chunkd prune --dry-run`` and ``chunkd prune``, then nothing beyond SPEC's keep set;
* ``restore``: ``chunkd restore`` of any version SPEC keeps (any round, any generation, latest);
* ``burst``: NVFlare overwrites its file faster than ``settle_delay``;
* ``replica``: ``status`` lag 0 must mean the bucket holds the newest rounds;
* ``verify``: ``chunkd verify`` while retention runs (exit 0: the store is healthy).

A reader thread restores listed versions and runs ``verify`` the whole time. Retention runs
every 0.3 s. Sequences with a bucket end by deleting the local databases and restoring every
round the bucket must hold with ``chunkd restore --replica``. The oracle
(:mod:`tests.reliability.lifecycle`) and every check (:mod:`tests.reliability.lifecycle_run`)
name the SPEC sentence they enforce.

``make test`` runs :func:`test_lifecycle_short` (two fixed seeds, one with a bucket). The long form
is :func:`test_lifecycle_campaign`, marked ``campaign``: 6 seeds for ``make campaign``, 300 with
``--torture`` (``make torture``); ``CHUNKD_LIFECYCLE_SEQUENCES=N`` runs N long-form seeds from
``CHUNKD_LIFECYCLE_FIRST`` (default 0; two processes can share a campaign).
``CHUNKD_LIFECYCLE_SEED=N`` replays one sequence (either test).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import run_cli, torture_enabled
from .lifecycle import ACTIONS, STYLES, Plan, make_plan
from .lifecycle_run import Sequence, _Abort

pytestmark = [pytest.mark.slow]

#: make test: one sequence with a bucket, one without (each chosen to reach restarts and kills)
SHORT_SEEDS = (67, 311)
SHORT_ACTIONS = 9
LONG_ACTIONS = 16
CAMPAIGN_SEEDS = 6
TORTURE_SEEDS = 300
SEED_BASE = 1700

_REPLICA_HARNESS = Path(__file__).resolve().parents[1] / "replica" / "conftest.py"


def _replica_harness() -> Any:
    spec = importlib.util.spec_from_file_location("chunkd_tests_lifecycle_weed", _REPLICA_HARNESS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _replay_seed() -> int | None:
    value = os.environ.get("CHUNKD_LIFECYCLE_SEED")
    return int(value) if value else None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "seed" not in metafunc.fixturenames:
        return
    replay = _replay_seed()
    if replay is not None:
        seeds: list[int] = [replay]
    elif metafunc.function.__name__ == "test_lifecycle_short":
        seeds = list(SHORT_SEEDS)
    else:
        count = TORTURE_SEEDS if torture_enabled(metafunc.config) else CAMPAIGN_SEEDS
        count = int(os.environ.get("CHUNKD_LIFECYCLE_SEQUENCES", count))
        first = int(os.environ.get("CHUNKD_LIFECYCLE_FIRST", 0))  # split a campaign across runs
        seeds = [SEED_BASE + first + n for n in range(count)]
    metafunc.parametrize("seed", seeds, ids=[f"seed{s}" for s in seeds])


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real SeaweedFS S3 gateway for the module (started on first use), with the throw-away
    identity of tests/replica in the environment."""
    harness = _replica_harness()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ["AWS_ACCESS_KEY_ID"] = harness.ACCESS_KEY
    os.environ["AWS_SECRET_ACCESS_KEY"] = harness.SECRET_KEY
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    servers: list[Any] = []

    def get() -> Any:
        if not servers:
            servers.append(harness.WeedServer(tmp_path_factory.mktemp("lifecycle-weed")).start())
        return servers[0]

    yield get
    for server in servers:
        server.kill()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


# -- the actions --------------------------------------------------------------------------------


def act(seq: Sequence, action: str) -> None:
    rng = seq.rng
    job = seq.jobs[rng.choice(sorted(seq.jobs))]
    if action == "write":
        for _ in range(rng.randint(1, 4)):
            seq.write_round(job)
            seq.settle()
    elif action in ("restart", "rerun"):
        seen = [v.round_num for v in seq.oracle.of(job.client) if v.round_num is not None]
        if not seen:
            return act(seq, "write")
        first = 1 if action == "restart" else rng.randint(1, max(seen))
        seq.new_run(job, first)
        for _ in range(rng.randint(1, 4)):
            seq.write_round(job)
            seq.settle()
    elif action == "kill_backlog":
        seq.write_round(job)
        time.sleep(rng.uniform(0.0, 0.5))  # at random: before, inside or after that ingest
        seq.stop(signal.SIGKILL)
        for _ in range(rng.randint(1, 4)):  # the job goes on while chunkd is down
            seq.write_round(job, up=False)
            time.sleep(0.01)
        seq.start()
    elif action == "reconfigure":
        seq.stop()
        seq.keep = rng.choice((0, 1, 2, 3, 4, 5))
        if rng.random() < 0.4:
            seq.delete = not seq.delete
        if rng.random() < 0.2:
            seq.delta = not seq.delta
        seq.start()
    elif action == "prune":
        seq.settle()
        seq.pause()  # no restore lease: prune applies retention to everything now
        for args in (("prune", "--dry-run", "--json"), ("prune", "--json")):
            done = cli(seq, *args)
            if done.returncode != 0:
                seq.fail(
                    f"chunkd {' '.join(args)} exited {done.returncode}: {done.stderr[-300:]!r}"
                )
        seq.check(exact=True)
        seq.paused = False
    elif action == "restore":
        seq.settle()
        restore_any(seq, job.client)
    elif action == "burst":
        nvflare = [j for j in seq.jobs.values() if j.style == "nvflare"]
        for _ in range(rng.randint(2, 4)):  # faster than settle_delay: SPEC allows missing some
            seq.write_round(nvflare[0])
            time.sleep(0.05)
        seq.settle()
    elif action == "replica":
        seq.check_replica()
    elif action == "verify":
        seq.write_round(job)  # retention has something to do meanwhile
        done = cli(seq, "verify")
        seq.stats["cli_verifies"] += 1
        if done.returncode != 0:  # a healthy store is never reported damaged
            seq.fail(f"chunkd verify exited {done.returncode}: {done.stdout[-300:]!r}")
    seq.stats[f"action_{action}"] += 1


def cli(seq: Sequence, *args: str) -> Any:
    assert seq.daemon is not None
    return run_cli(*args, "--config", str(seq.daemon.config), "--socket", str(seq.daemon.socket))


def restore_any(seq: Sequence, client: str) -> None:
    """``chunkd restore`` of a version SPEC keeps, by round and generation, or ``latest``."""
    must = sorted(seq.oracle.settle_retention(client, seq.keep))
    if not must:
        return
    listed = seq.listed(client)
    out = seq.root / "restore.pth"
    v = seq.oracle.versions[seq.rng.choice(must)]
    generation = listed.get((v.round_num, v.sha256))  # type: ignore[arg-type]
    if generation is None:
        seq.fail(f"client {client} round {v.round_num} (file #{v.vid}): not listed")
        return
    args = ["restore", "--client", client, "--round", str(v.round_num), "-o", str(out)]
    # the round's current version is its highest generation; any other needs --generation
    current = generation == max(g for (r, _), g in listed.items() if r == v.round_num)
    if seq.rng.random() < 0.5 or not current:
        args += ["--generation", str(generation)]
    done = cli(seq, *args)
    got = hashlib.sha256(out.read_bytes()).hexdigest() if done.returncode == 0 else None
    seq.stats["cli_restores"] += 1
    if got != v.sha256:
        seq.fail(f"chunkd {' '.join(args[:7])}: {got} != file #{v.vid}: {done.stderr[-200:]!r}")
    out.unlink(missing_ok=True)


# -- one sequence -------------------------------------------------------------------------------


def run_sequence(plan: Plan, root: Path, weed: Any) -> Sequence:
    server = weed() if plan.replica else None
    seq = Sequence(plan, root, server, prefix=f"lc{plan.seed}-{secrets.token_hex(3)}/fl")
    seq.start()
    seq.reader.start()
    try:
        for action in plan.actions:
            started = time.monotonic()
            act(seq, action)
            seq.check()
            seq.seconds[action] += time.monotonic() - started
        started = time.monotonic()
        done = cli(seq, "verify")
        seq.seconds["final_verify"] += time.monotonic() - started
        if done.returncode != 0:
            seq.fail(f"final chunkd verify exited {done.returncode}: {done.stdout[-300:]!r}")
        if plan.replica:
            seq.host_loss()
        else:
            seq.stop()
        seq.seconds["end"] += time.monotonic() - started
    except _Abort:
        pass
    finally:
        seq.cleanup()
    seq.reader.join(timeout=120)
    return seq


def _run(seed: int, n_actions: int, tmp_path: Path, weed: Any, figures: Any, **kw: Any) -> None:
    plan = make_plan(seed, n_actions, **kw)
    started = time.monotonic()
    seq = run_sequence(plan, tmp_path / f"seq{seed}", weed)
    figures.update(
        seed=seed,
        keep=plan.keep,
        delta=plan.delta,
        replica=plan.replica,
        styles=list(plan.styles),
        actions=len(plan.actions),
        failures=len(seq.failures),
        duration_s=round(time.monotonic() - started, 1),
        **dict(sorted(seq.stats.items())),
    )
    figures["seconds"] = {k: round(v, 1) for k, v in sorted(seq.seconds.items())}
    figures["failure_details"] = seq.failures[:20]
    figures.save()
    replay = f"CHUNKD_LIFECYCLE_SEED={seed} pytest tests/reliability/test_lifecycle_campaign.py"
    assert not seq.failures, f"{replay}\nplan: {plan.actions}\n" + json.dumps(
        seq.failures[:12], indent=1
    )


def test_lifecycle_short(seed: int, tmp_path: Path, weed: Any, figures: Any) -> None:
    """make test: two fixed sequences (the first with a SeaweedFS bucket)."""
    _run(seed, SHORT_ACTIONS, tmp_path, weed, figures, replica=seed == SHORT_SEEDS[0])


@pytest.mark.campaign
@pytest.mark.torture
def test_lifecycle_campaign(seed: int, tmp_path: Path, weed: Any, figures: Any) -> None:
    """make campaign / make torture: the long form, one test per seed."""
    _run(seed, LONG_ACTIONS, tmp_path, weed, figures)


def test_plans_reach_every_action_and_framework() -> None:
    """The long form's seeds cover every action and every framework (a campaign that never
    restarts a job could not find what it exists to find)."""
    plans = [make_plan(SEED_BASE + n, LONG_ACTIONS) for n in range(TORTURE_SEEDS)]
    actions = {a for p in plans for a in p.actions}
    assert actions == set(ACTIONS)
    assert {s for p in plans for s in p.styles} == set(STYLES)
    assert sum(p.replica for p in plans) > TORTURE_SEEDS // 3
