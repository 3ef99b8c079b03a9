"""The lifecycle campaign's oracle and its FL jobs (issue 17): pure bookkeeping, no daemon.

The oracle is written from SPEC.md alone, never from chunkd's code. It knows every checkpoint file
a job ever wrote (its content's SHA-256, round number, write order and which job run wrote it) and
derives from SPEC what the store must hold at any moment:

* SPEC "Rounds", order: *rounds are ordered by run, then round number. A job restarted or rerun
  into the same directory ... starts a new run, newer than every earlier one, whether or not those
  round numbers are still stored; a backlog of one run ingested in any order after downtime stays
  one run.* -> :meth:`Oracle.order_key` is ``(run, round)`` with the oracle's own run counter.
* SPEC "Rounds": *New content for an existing round number from the same path ... the new version
  becomes that round and the earlier one stays restorable (an earlier generation) until retention
  removes it* -> per round number the most recently written stored version is current.
* SPEC "Retention": *keeps the newest N rounds of each client in that order ... and at most N
  earlier generations of kept rounds* -> :meth:`Oracle.spec_keep`.
* SPEC "Rounds": *`latest` is the newest round of the newest run: the round most recently
  written* -> :meth:`Oracle.latest`.

A version that SPEC's retention let go once may be gone for good (a later, larger
``chunk_keep_rounds`` does not bring it back): :meth:`Oracle.must_keep` is what SPEC keeps now
minus everything it ever let go. Versions the daemon could not have seen (overwritten while no
daemon ran) are ``unobservable``; versions overwritten while it ran but before they settled must
be stored or logged ``checkpoint.superseded`` (issue 17, item 7).
"""

from __future__ import annotations

import hashlib
import io
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: How each framework names its files and what it puts around the state_dict.
STYLES = ("fedscope", "flower", "nvflare")

#: Outcomes of one written version: waiting; stored as a round; overwritten before the daemon
#: took it (while it ran: must be logged; while it was down: cannot be known).
PENDING, STORED, SUPERSEDED, UNOBSERVABLE = "pending", "stored", "superseded", "unobservable"


@dataclass
class Version:
    """One file version a job wrote."""

    vid: int
    client: str
    path: Path
    run: int
    #: None for a sequence-numbered file (NVFlare) until the daemon said which round it is
    round_num: int | None
    sha256: str
    size: int
    written_at: float
    state: str = PENDING
    #: stored while delete_after_ingest was on: the daemon may delete the file
    deletable: bool = False


@dataclass
class Job:
    """One FL client's training job: FedAvg-like global weights that move a little every round."""

    client: str
    style: str
    directory: Path
    seed: int
    elements: int
    run: int = 0
    next_round: int = 1
    weights: Any = None
    _generator: Any = None

    def start_run(self, seed: int, first_round: int) -> None:
        """A new run of the job (first start, restart from round 1, rerun from an earlier round):
        new initial weights, numbering from ``first_round``."""
        import torch

        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)
        self.weights = {
            "features.weight": torch.randn(self.elements, generator=self._generator),
            "classifier.weight": torch.randn(10, 64, generator=self._generator),
            "classifier.bias": torch.zeros(10),
            "bn.running_mean": torch.zeros(64),
            "bn.num_batches_tracked": torch.tensor(0),
        }
        self.next_round = first_round

    def fedavg_step(self) -> None:
        """One aggregation: every float weight moves by a small averaged update (as FedAvg does,
        so consecutive rounds share no chunk bytes and deltas have real work)."""
        import torch

        for name, tensor in self.weights.items():
            if tensor.is_floating_point():
                update = torch.randn(tensor.shape, generator=self._generator) * 1e-3
                self.weights[name] = tensor + update
        self.weights["bn.num_batches_tracked"] += 100

    def file_name(self, round_num: int) -> str:
        if self.style == "fedscope":
            return f"{round_num}.pth"
        if self.style == "flower":
            return f"model_round_{round_num}.pth"
        return "FL_global_model.pt"

    def payload(self, round_num: int) -> bytes:
        """The checkpoint as the framework saves it (``torch.save`` into memory)."""
        import torch

        state = {k: v.clone() for k, v in self.weights.items()}
        if self.style == "fedscope":
            obj: object = {"cur_round": round_num, "model": state}
        elif self.style == "nvflare":
            obj = {"model": state, "train_conf": {"train_task_name": "train"}, "meta": None}
        else:
            obj = state
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.getvalue()

    @property
    def numbered_by_name(self) -> bool:
        return self.style != "nvflare"


def write_file(path: Path, data: bytes, *, atomic: bool) -> None:
    """Write ``data`` at ``path``: a temp name then a rename, or in place (as torch.save does)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if atomic:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    else:
        with open(path, "wb") as f:
            f.write(data)


@dataclass
class Oracle:
    """Every version ever written, and what SPEC says the store holds."""

    versions: list[Version] = field(default_factory=list)
    #: version ids SPEC's retention let go at some point (never required again)
    retired: set[int] = field(default_factory=set)

    def record(
        self, job: Job, path: Path, round_num: int | None, data: bytes, when: float
    ) -> Version:
        """A job wrote ``data`` at ``path``; any pending version at that path was overwritten."""
        for v in self.versions:
            if v.path == path and v.state == PENDING:
                v.state = SUPERSEDED
        version = Version(
            len(self.versions),
            job.client,
            path,
            job.run,
            round_num,
            hashlib.sha256(data).hexdigest(),
            len(data),
            when,
        )
        self.versions.append(version)
        return version

    def of(self, client: str, *states: str) -> list[Version]:
        return [
            v for v in self.versions if v.client == client and (not states or v.state in states)
        ]

    @staticmethod
    def order_key(v: Version) -> tuple[int, int, int]:
        """SPEC "Rounds": run, then round number (then write order, for generations)."""
        assert v.round_num is not None
        return (v.run, v.round_num, v.vid)

    def current(self, client: str) -> dict[int, Version]:
        """Round number -> its current version: the most recently written stored one."""
        out: dict[int, Version] = {}
        for v in self.of(client, STORED):  # in write order
            assert v.round_num is not None
            out[v.round_num] = v
        return out

    def spec_keep(self, client: str, keep: int) -> set[int]:
        """Ids of the versions SPEC "Retention" keeps with ``chunk_keep_rounds = keep``."""
        stored = self.of(client, STORED)
        if keep == 0:
            return {v.vid for v in stored}
        current = self.current(client)
        newest = sorted(current.values(), key=self.order_key)[-keep:]
        kept_rounds = {v.round_num for v in newest}
        earlier = sorted(
            (v for v in stored if current[v.round_num] is not v and v.round_num in kept_rounds),
            key=self.order_key,
        )
        return {v.vid for v in newest} | {v.vid for v in earlier[-keep:]}

    def settle_retention(self, client: str, keep: int) -> set[int]:
        """After the store caught up: what must be restorable now (SPEC keeps it now and never
        let it go before); remembers what SPEC lets go from here on."""
        keep_now = self.spec_keep(client, keep)
        for v in self.of(client, STORED):
            if v.vid not in keep_now:
                self.retired.add(v.vid)
        return keep_now - self.retired

    def newest_current(self, client: str, n: int) -> list[Version]:
        """The newest ``n`` current rounds in SPEC's order (n = 0: all)."""
        ordered = sorted(self.current(client).values(), key=self.order_key)
        return ordered[-n:] if n else ordered

    def latest(self, client: str) -> Version | None:
        """SPEC: `latest` is the round most recently written (of the stored versions)."""
        stored = self.of(client, STORED)
        return max(stored, key=lambda v: v.written_at) if stored else None

    def next_sequence_round(self, client: str) -> int:
        """SPEC "Rounds": no number in the name or contents: one more than the highest stored."""
        rounds = [v.round_num for v in self.of(client, STORED) if v.round_num is not None]
        return max(rounds) + 1 if rounds else 1


@dataclass
class Plan:
    """A sequence's seeded choices: its configuration and its list of actions."""

    seed: int
    keep: int
    delta: bool
    delete_after_ingest: bool
    replica: bool
    replica_keep: int
    styles: tuple[str, ...]
    actions: list[str]


#: Actions and their weights; ``burst`` only for NVFlare clients, ``replica`` only with a bucket.
ACTIONS: dict[str, int] = {
    "write": 34,
    "restart": 9,
    "rerun": 8,
    "kill_backlog": 9,
    "reconfigure": 7,
    "prune": 8,
    "restore": 10,
    "burst": 5,
    "replica": 6,
    "verify": 4,
}


def make_plan(seed: int, n_actions: int, *, replica: bool | None = None) -> Plan:
    rng = random.Random(seed)
    keep = rng.choice((2, 3, 3, 4, 5))
    with_replica = rng.random() < 0.5 if replica is None else replica
    styles = tuple(rng.choice(STYLES) for _ in range(rng.choice((1, 2))))
    names = [
        a
        for a in ACTIONS
        if (a != "burst" or "nvflare" in styles) and (a != "replica" or with_replica)
    ]
    weights = [ACTIONS[a] for a in names]
    actions = ["write", *rng.choices(names, weights, k=n_actions - 1)]
    return Plan(
        seed=seed,
        keep=keep,
        delta=rng.random() < 0.75,
        delete_after_ingest=rng.random() < 0.3,
        replica=with_replica,
        replica_keep=rng.choice((0, keep, max(1, keep - 1))),
        styles=styles,
        actions=actions,
    )
