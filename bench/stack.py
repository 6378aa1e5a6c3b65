"""One run's world for one broker, and the measuring primitive: a drain.

A drain pauses the worker, publishes N messages, resumes it, and times from the first
message consumed to the last one done; it counts the commands each Redis ran and, when
asked, the PostgreSQL transactions of the bench database in the same window.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from bench.services import Postgres, RabbitVhost, RedisServer, cpu_seconds, wait_for
from bench.worker import AmqpQueue, Pool, RedisQueue, Worker, control_app
from shared.adapters.events import EventStream
from shared.client import CreditsClient
from shared.config import Settings, load_settings
from shared.queues import FLOW_QUEUE
from tests.factories import ALL_DELIVERED, as_env, funded_members, postcard
from worker.tasks.send import NOOP_TASK

BROKERS = ("redis", "amqp")
POLL_S = 0.01
# Generous: every job costs one credit, and a run never sends more than this per member.
CREDITS_PER_MEMBER = 1_000_000
DRAIN_TIMEOUT_S = 900
# A Redis BRPOP under way when the worker paused may still take one message.
LEAK_EXPECTED = 1


@dataclass
class Snapshot:
    redis: Counter[str]
    vendor: Counter[str]
    cpu: dict[str, float]


def _minus(after: Counter[str], before: Counter[str]) -> Counter[str]:
    out = Counter(after)
    out.subtract(before)
    return +out


@dataclass
class Drain:
    """One timed drain of ``jobs`` messages and what it cost."""

    name: str
    jobs: int
    seconds: float
    publish_seconds: float
    timed: int  # the jobs consumed after the timer started (all, unless the pause leaked)
    redis_publish: Counter[str]
    redis_drain: Counter[str]
    vendor: Counter[str]
    pg: dict[str, int] | None = None
    cpu: dict[str, float] = field(default_factory=dict)
    load: float = 0.0  # the machine's 1-minute load average when the drain ended
    statuses: dict[str, int] = field(default_factory=dict)
    finals: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)

    @property
    def rate(self) -> float:
        return self.timed / self.seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "jobs": self.jobs, "timed": self.timed,
            "seconds": round(self.seconds, 3),
            "rate": round(self.rate, 2), "publish_seconds": round(self.publish_seconds, 3),
            "statuses": self.statuses,
            "redis_publish": dict(self.redis_publish), "redis_drain": dict(self.redis_drain),
            "vendor_redis": dict(self.vendor), "pg": self.pg,
            "cpu_seconds": {k: round(v, 3) for k, v in self.cpu.items()}, "load": self.load,
        }  # fmt: skip


class Stack:
    """Private servers, settings, a producer client and the run's workers, for one broker.

    Use as a context manager: everything it started is stopped and removed on exit.
    """

    def __init__(self, broker: str, workdir: Path, *, log=print) -> None:
        if broker not in BROKERS:
            raise ValueError(f"broker must be one of {BROKERS}")
        self.broker, self.workdir, self.log = broker, workdir, log
        self._exit = contextlib.ExitStack()
        self.workers: list[Worker] = []

    def __enter__(self) -> Stack:
        try:
            self._start()
        except BaseException:
            self._exit.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._exit.close()

    def _start(self) -> None:
        on_exit = self._exit.callback
        self.app_redis = RedisServer("app-redis", self.workdir, durable=True).start()
        on_exit(self.app_redis.stop)
        self.vendor_redis = RedisServer("vendor-redis", self.workdir, durable=False).start()
        on_exit(self.vendor_redis.stop)
        self.pg = Postgres().create()
        on_exit(self.pg.drop)
        broker_url = self.app_redis.url if self.broker == "redis" else self.amqp_broker()
        pg_url = make_url(self.pg.url).set(drivername="postgresql+psycopg")
        self.base_env = {
            "CREDITS_DATABASE_URL": pg_url.render_as_string(hide_password=False),
            "CREDITS_REDIS_URL": self.app_redis.url,
            "CREDITS_BROKER_URL": broker_url,
            "CREDITS_STUB_REDIS_URL": self.vendor_redis.url,
            "CREDITS_JOB_SIGNING_KEY": f"bench:{secrets.token_urlsafe(32)}",
            "CREDITS_STUB_LATENCY_MS": "0",
            **as_env(ALL_DELIVERED),
        }
        self.settings = settings_from(self.env())
        from shared.migrations import upgrade

        upgrade(self.settings.database_url)
        self.control = control_app(self.settings)
        on_exit(self.control.close)
        self.client = CreditsClient(settings=self.settings)
        on_exit(self.client.close)
        # The bench reads the outcome stream through its own counting client, so that
        # its reads are not counted as the pipeline's.
        self.events = EventStream(self.app_redis.client, self.settings.stream)
        if self.broker == "redis":
            self.queue: Any = RedisQueue(self.app_redis.client, self.settings)
        else:
            self.queue = AmqpQueue(self.control)
            on_exit(self.queue.conn.release)
        self._exit.callback(self._stop_workers)

    def amqp_broker(self) -> str:
        """An amqp run's broker URL: a vhost of its own on the machine's RabbitMQ (the
        chaos suite, which restarts its broker, runs a node of its own instead)."""
        vhost = RabbitVhost().create()
        self._exit.callback(vhost.delete)
        return vhost.url

    def env(self, **overrides: str) -> dict[str, str]:
        """The workers' environment: the caller's, with this run's CREDITS_* on top."""
        return {**os.environ, **self.base_env, "PYTHONUNBUFFERED": "1", **overrides}

    # ------------------------------------------------------------ set-up

    def fund(self, n: int) -> list[int]:
        from shared.db import Database

        db = Database(self.settings.database_url)
        try:
            return funded_members(db, n, credits=CREDITS_PER_MEMBER)
        finally:
            db.dispose()  # its backends exit and flush their statistics

    def worker(self, pool: Pool, **env: str) -> Worker:
        worker = Worker(self.env(**env), pool, self.control, self.workdir)
        self.workers.append(worker)
        return worker.start()

    def _stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()

    # ------------------------------------------------------------ measuring

    def snapshot(self, worker: Worker) -> Snapshot:
        cpu = {
            "worker": cpu_seconds(worker.pids()),
            "postgres": cpu_seconds(self.pg.backends()),
            "app_redis": cpu_seconds([self.app_redis.proc.pid]),
            "vendor_redis": cpu_seconds([self.vendor_redis.proc.pid]),
        }
        return Snapshot(self.app_redis.commandstats(), self.vendor_redis.commandstats(), cpu)

    def publish_noops(self, n: int) -> None:
        for _ in range(n):
            self.control.send_task(NOOP_TASK, queue=FLOW_QUEUE)

    def publish_sends(self, jobs: list[dict], rate: float | None = None) -> list[float]:
        """Publish signed jobs with the producer client, at ``rate`` per second if given;
        returns the time at which each ``send_action`` returned."""
        returned: list[float] = []
        start = time.time()
        for i, job in enumerate(jobs):
            if rate is not None and (delay := start + i / rate - time.time()) > 0:
                time.sleep(delay)
            self.client.send_action(job)
            returned.append(time.time())
        return returned

    def push(self, jobs: list[dict], rate: float | None = None) -> tuple[list[float], dict]:
        """Publish to a running worker and wait for every final event: (returned, finals)."""
        cursor = self.events.last_id()
        returned = self.publish_sends(jobs, rate)
        return returned, self.finals(cursor, len(jobs))

    def finals(self, after: str, n: int, timeout_s: float = DRAIN_TIMEOUT_S) -> dict:
        """Wait for ``n`` final outcome events after stream id ``after``, by job_key."""
        found: dict[str, dict[str, str]] = {}
        deadline = time.monotonic() + timeout_s
        while len(found) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(found)} of {n} jobs ended in {timeout_s:g}s")
            for entry_id, event in self.events.read(after, count=5000, block_ms=200):
                after = entry_id
                if event.get("final") == "1":
                    found[job_key(event)] = event
        return found

    def drain(
        self,
        worker: Worker,
        name: str,
        n: int,
        jobs: list[dict] | None = None,
        *,
        accounted: bool = False,
    ) -> Drain:
        """Pause ``worker``, publish ``n`` no-ops (or ``jobs``), resume it, and time the
        drain from the first message taken to the last one done (for jobs: the ``at`` of
        the last final event). ``accounted`` also counts PostgreSQL transactions, which
        needs the database's statistics to settle before and after (about 10 s)."""
        worker.pause()
        pg_before = self._settled_pg() if accounted else None
        cursor = self.events.last_id()
        before = self.snapshot(worker)
        started = time.perf_counter()
        if jobs is None:
            self.publish_noops(n)
        else:
            self.publish_sends(jobs)
        publish_s = time.perf_counter() - started
        published = self.snapshot(worker)
        waiting = self.queue.waiting()
        if waiting < n - LEAK_EXPECTED:
            self.log(f"  warning: {name}: the paused worker took {n - waiting} of {n} messages;"
                     " timing the rest")  # fmt: skip
        worker.resume()
        first = _poll_until(lambda: self.queue.waiting() < waiting)
        if jobs is None:
            last = self._drained(worker)
            finals: dict = {}
        else:
            finals = self.finals(cursor, n)
            last = max(float(e["at"]) for e in finals.values())
            self._drained(worker)  # retries and acks done too, before counting
        after = self.snapshot(worker)
        pg = None
        if pg_before is not None:
            pg = {k: v - pg_before[k] for k, v in self._settled_pg().items()}
        return Drain(
            name, n, last - first, publish_s, timed=waiting,
            redis_publish=_minus(published.redis, before.redis),
            redis_drain=_minus(after.redis, published.redis),
            vendor=_minus(after.vendor, before.vendor), pg=pg,
            cpu={k: after.cpu[k] - published.cpu[k] for k in after.cpu},
            load=os.getloadavg()[0],
            statuses=dict(Counter(e["status"] for e in finals.values())), finals=finals,
        )  # fmt: skip

    def _settled_pg(self) -> dict[str, int]:
        self.pg.settle()
        return self.pg.counters()

    def _drained(self, worker: Worker) -> float:
        """Wait until no message is waiting or unacked (seen twice in a row); its time."""
        while True:
            done = _poll_until(lambda: self.queue.pending(worker) == 0)
            time.sleep(POLL_S)
            if self.queue.pending(worker) == 0:
                return done


def settings_from(env: dict[str, str]) -> Settings:
    values = {k.removeprefix("CREDITS_").lower(): v for k, v in env.items()
              if k.startswith("CREDITS_") and not k.startswith("CREDITS_BENCH_")}  # fmt: skip
    return load_settings(**values)


def _poll_until(check: Callable[[], bool], timeout_s: float = DRAIN_TIMEOUT_S) -> float:
    """Poll every few ms; the wall-clock time at which ``check`` first held."""
    wait_for(check, timeout_s, "the queue", every_s=POLL_S)
    return time.time()


def job_key(job: dict) -> str:
    """A job's identity: its member and job_id (a job dict or an event's fields)."""
    return f"{job['member_id']}:{job['job_id']}"


def postcards(members: list[int], n: int, tag: str) -> list[dict]:
    """``n`` US postcards (cost 1) spread round-robin over ``members``."""
    return [postcard(f"{tag}-{i}", members[i % len(members)]) for i in range(n)]


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": len(values)}  # fmt: skip


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@contextlib.contextmanager
def running(stack: Stack, pool: Pool, **env: str) -> Iterator[Worker]:
    worker = stack.worker(pool, **env)
    try:
        yield worker
    finally:
        worker.stop()
