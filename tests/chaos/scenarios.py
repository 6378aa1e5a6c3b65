"""The fault scenarios: each publishes jobs from a producer thread while it does its faults
to the running world, then lets the sweeps settle everything and hands the run to
``tests.chaos.report``. Sizes: ``full`` for ``make chaos``, ``quick`` for ``--quick`` and
the integration test."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from bench.stack import job_key
from shared.db import Database
from shared.models import FINAL_JOB_STATUSES, Job
from tests.chaos.world import World
from tests.factories import as_env, mixed_jobs, stub_rates

MEMBERS = 8
# Every scenario's vendor: 15% transient errors (one failed attempt, then the outcome),
# 5% refused; the rest delivered. A refusal is a rightful refund; nothing else is.
RATES = stub_rates(delivered=0.80, transient=0.15, rejected=0.05)
LATENCY_MS = "20"
BROKER_DOWN_S = 3.0
SETTLE_TIMEOUT_S = 150.0
POLL_S = 1.0


@dataclass(frozen=True)
class Size:
    jobs: int
    rate: float | None  # jobs a second; None: as fast as the producer can
    faults: int


class Publisher(threading.Thread):
    """The flow engine: ``send_action`` for each job, paced; what it accepted and refused."""

    def __init__(self, client: Any, jobs: list[dict], rate: float | None) -> None:
        super().__init__(daemon=True)
        self.client, self.jobs, self.rate = client, jobs, rate
        self.accepted: list[str] = []
        self.refused: list[tuple[str, str]] = []

    @property
    def done(self) -> int:
        return len(self.accepted) + len(self.refused)

    def run(self) -> None:
        start = time.monotonic()
        for i, job in enumerate(self.jobs):
            if self.rate and (delay := start + i / self.rate - time.monotonic()) > 0:
                time.sleep(delay)
            try:
                self.client.send_action(job)
            except Exception as exc:  # BrokerUnavailable above all: not accepted
                self.refused.append((job_key(job), f"{type(exc).__name__}: {exc}"))
            else:
                self.accepted.append(job_key(job))

    def wait_for(self, share: float) -> None:
        """Until this share of the jobs went out (or the publisher ended)."""
        while self.is_alive() and self.done < share * len(self.jobs):
            time.sleep(0.05)


Fault = Callable[[World, Publisher, Size], dict[str, Any]]


def _spaced(size: Size) -> list[float]:
    """When, as shares of the publishing, the faults come: spread over its middle."""
    return [(i + 1) / (size.faults + 1) for i in range(size.faults)]


def kill_workers(world: World, pub: Publisher, size: Size) -> dict[str, Any]:
    for i, share in enumerate(_spaced(size)):
        pub.wait_for(share)
        world.kill(("w1", "w2")[i % 2])
    return {"kills": size.faults}


def restart_broker(world: World, pub: Publisher, size: Size, *, hard: bool = False):
    downtimes = []
    for share in _spaced(size):
        pub.wait_for(share)
        started = time.monotonic()
        world.broker_down(hard=hard)
        time.sleep(BROKER_DOWN_S)
        world.broker_up()
        downtimes.append(round(time.monotonic() - started, 1))
    return {"broker_down_s": downtimes}


def kill9_broker(world: World, pub: Publisher, size: Size) -> dict[str, Any]:
    return restart_broker(world, pub, size, hard=True)


def terminate_backends(world: World, pub: Publisher, size: Size) -> dict[str, Any]:
    terminated = []
    for share in _spaced(size):
        pub.wait_for(share)
        terminated.append(world.terminate_pg_backends())
    return {"backends_terminated": terminated}


KWARG = re.compile(r"'(job_id|member_id)': '?([^',}]+)")


def _in_vendor_call(world: World, name: str) -> set[str]:
    """The jobs worker ``name`` runs now (their kwargs show a job's id and member)."""
    from socket import gethostname

    node = f"{name}@{gethostname()}"
    replies = world.stack.control.control.inspect(destination=[node], timeout=1).active() or {}
    keys = set()
    for task in replies.get(node, []):
        fields = dict(KWARG.findall(str(task.get("kwargs"))))
        if {"job_id", "member_id"} <= fields.keys():
            keys.add(f"{fields['member_id']}:{fields['job_id']}")
    return keys


def stop_worker(world: World, pub: Publisher, size: Size) -> dict[str, Any]:
    """SIGSTOP w1 while it is in vendor calls, for longer than the in-doubt threshold
    (idle time, plus the broker's redelivery delay), so the resolver acts on its jobs."""
    pub.wait_for(0.3)
    deadline = time.monotonic() + 60
    held: set[str] = set()
    while not held and time.monotonic() < deadline:
        held = _in_vendor_call(world, "w1")
    world.pause("w1")
    stopped_s = world.settings.in_doubt_after_s + world.settings.redelivery_delay_s + 10
    time.sleep(stopped_s)
    world.resume("w1")
    return {"stopped_s": round(stopped_s, 1), "excluded": sorted(held)}


def no_fault(world: World, pub: Publisher, size: Size) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Scenario:
    name: str
    about: str
    fault: Fault
    full: Size
    quick: Size
    env: dict[str, str] = field(default_factory=dict)

    def size(self, quick: bool) -> Size:
        return self.quick if quick else self.full


SCENARIOS = {
    s.name: s
    for s in [
        Scenario("worker-kill", "SIGKILL of a whole worker (parent and pool), alternating",
                 kill_workers, Size(400, 40, 4), Size(100, 40, 2)),
        Scenario("broker-restart", f"broker stopped cleanly, down {BROKER_DOWN_S:g} s, started",
                 restart_broker, Size(400, 40, 2), Size(100, 40, 1)),
        Scenario("broker-kill9", f"broker kill -9, down {BROKER_DOWN_S:g} s, started",
                 kill9_broker, Size(400, 40, 2), Size(100, 40, 1)),
        Scenario("pg-terminate", "pg_terminate_backend on every connection of the database",
                 terminate_backends, Size(400, 40, 5), Size(100, 40, 3)),
        Scenario("worker-sigstop", "SIGSTOP of a worker mid vendor call, past the in-doubt "
                 "threshold, then SIGCONT", stop_worker, Size(200, 20, 1), Size(60, 20, 1),
                 env={"CREDITS_STUB_LATENCY_MS": "300"}),
        Scenario("burst", "a burst at once, drained over longer than the in-doubt threshold",
                 no_fault, Size(1000, None, 0), Size(300, None, 0),
                 env={"CREDITS_STUB_LATENCY_MS": "50"}),
    ]
}  # fmt: skip


@dataclass
class Run:
    """What a scenario did, for the report."""

    scenario: Scenario
    broker: str
    size: Size
    members: list[int]
    accepted: list[str]
    refused: list[tuple[str, str]]
    notes: dict[str, Any]
    settle_s: float
    seconds: float


def run(scenario: Scenario, broker: str, workdir: Path, *, quick: bool, log=print):
    """Run one scenario in a world of its own; returns (run, report)."""
    from tests.chaos.report import check

    size = scenario.size(quick)
    env = {"CREDITS_STUB_LATENCY_MS": LATENCY_MS, **as_env(RATES), **scenario.env}
    started = time.monotonic()
    with World(broker, workdir, env, log=log) as world:
        members = world.stack.fund(MEMBERS)
        jobs = mixed_jobs(members, size.jobs, prefix=f"{scenario.name}-{broker}")
        pub = Publisher(world.stack.client, jobs, size.rate)
        publishing = time.monotonic()
        pub.start()
        notes = scenario.fault(world, pub, size)
        pub.join()
        notes["publish_s"] = round(time.monotonic() - publishing, 1)
        settle_s = settle(world, set(pub.accepted))
        # From the first job sent to the last one settled (the burst's drain time).
        notes["drain_s"] = round(time.monotonic() - publishing, 1)
        result = Run(scenario, broker, size, members, pub.accepted, pub.refused, notes,
                     settle_s, time.monotonic() - started)  # fmt: skip
        return result, check(world, result)


def settle(world: World, accepted: set[str], timeout_s: float = SETTLE_TIMEOUT_S) -> float:
    """Wait until every accepted job is final and its event confirmed (or the timeout);
    the seconds waited."""
    db = Database(world.settings.database_url)
    started = time.monotonic()
    try:
        while time.monotonic() - started < timeout_s:
            try:
                if not (accepted - settled_keys(db)):
                    break
            except Exception:  # a terminated backend, a restarting server: ask again
                pass
            time.sleep(POLL_S)
    finally:
        db.dispose()
    return time.monotonic() - started


def settled_keys(db: Database) -> set[str]:
    finals = [s.value for s in FINAL_JOB_STATUSES]
    with db.unit_of_work() as session:
        rows = session.execute(
            select(Job.member_id, Job.job_id).where(
                Job.status.in_(finals), Job.notified_at.is_not(None)
            )
        ).all()
    return {f"{m}:{j}" for m, j in rows}
