"""The figures of issue 10 for one broker, all from one run.

One production worker (``-P prefork -c 2``, stub at 0 ms) runs, interleaved round by
round so that the machine's load hits each alike: (a) no-ops, (b) ``send_action`` over
100 members, (c) the same number on one member; then (d) latency at half of (b)'s rate.
(e) starts one worker per candidate pool with the stub at 250 ms, each measured right
after (b) again on the production worker. (f) is the production worker's memory over
every job it ran.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.stack import Drain, Stack, job_key, percentile, postcards, running, spread
from bench.worker import Pool, Worker

PRODUCTION_POOL = Pool("prefork", 2)
SLOW_VENDOR_MS = 250
SLOW_POOLS = (Pool("threads", 32), Pool("threads", 64), Pool("gevent", 64))
QUICK_SLOW_POOLS = SLOW_POOLS[1:]
WARM_NOOPS = 200
SLOW_WARM_UP = 16  # jobs: the slow worker's first connections and threads
RSS_BATCH = 5000


@dataclass(frozen=True)
class Sizes:
    noop: int  # (a): no-ops per round
    send: int  # (b) and (c): jobs per round
    rounds: int  # rounds of (a), (b), (c)
    latency_s: float  # (d): seconds of steady publishing
    slow: int  # (e): jobs per pool
    rss_jobs: int  # (f): send_action jobs the production worker runs, at least
    slow_pools: tuple[Pool, ...] = SLOW_POOLS  # (e)
    members: int = 100


QUICK = Sizes(
    noop=800, send=150, rounds=1, latency_s=5, slow=80, rss_jobs=0, slow_pools=QUICK_SLOW_POOLS
)
# Five short rounds rather than three long ones: the median of five survives a burst of
# load from elsewhere hitting one or two of them.
DEFAULT = Sizes(noop=1000, send=200, rounds=5, latency_s=10, slow=160, rss_jobs=0)


class Tags:
    """Unique job_id prefixes within a run."""

    def __init__(self) -> None:
        self.used: Counter[str] = Counter()

    def __call__(self, prefix: str) -> str:
        self.used[prefix] += 1
        return f"{prefix}{self.used[prefix]}"


class Memory:
    """The production worker's memory after each stage, with the jobs it had run."""

    def __init__(self) -> None:
        self.samples: list[dict[str, Any]] = []
        self.tasks = self.sends = 0

    def ran(self, drain: Drain | int, *, sends: bool) -> None:
        n = drain if isinstance(drain, int) else drain.jobs
        self.tasks += n
        self.sends += n if sends else 0

    def sample(self, worker: Any, label: str) -> None:
        self.samples.append({"label": label, "tasks": self.tasks, "sends": self.sends,
                             **worker.memory()})  # fmt: skip

    def summary(self) -> dict[str, Any]:
        start, warm, end = self.samples[0], self.samples[1], self.samples[-1]
        return {
            "samples": self.samples,
            "tasks": end["tasks"],
            "sends": end["sends"],
            "growth_from_start": end["rss"] / start["rss"] - 1,
            "growth_from_warm": end["rss"] / warm["rss"] - 1,
            "pss_growth_from_warm": end["pss"] / warm["pss"] - 1,
        }


def run_broker(broker: str, sizes: Sizes, workdir: Path, log: Any = print) -> dict[str, Any]:
    started = time.monotonic()
    with Stack(broker, workdir / broker, log=log) as stack:
        result = BrokerRun(stack, sizes, log).run()
    return {**result, "seconds": time.monotonic() - started}


class BrokerRun:
    """Every figure for one broker, on one stack; ``run()`` returns them as a dict."""

    def __init__(self, stack: Stack, sizes: Sizes, log: Any) -> None:
        self.stack, self.sizes, self.log = stack, sizes, log
        self.tag = Tags()
        self.started = time.monotonic()
        self.memory = Memory()
        self.runs: dict[str, list[Drain]] = {"noop": [], "send": [], "one_member": []}

    def say(self, message: str) -> None:
        self.log(f"[{self.stack.broker} +{time.monotonic() - self.started:.0f}s] {message}")

    def run(self) -> dict[str, Any]:
        self.members = self.stack.fund(self.sizes.members)
        self.say(f"{self.sizes.members} members funded; starting the production worker")
        with running(self.stack, PRODUCTION_POOL) as worker:
            self.memory.sample(worker, "start (idle)")
            self.memory.ran(self.stack.drain(worker, "warm-up", WARM_NOOPS), sends=False)
            for r in range(self.sizes.rounds):
                self.round(worker, r)
            latency = self.latency(worker)
            slow = [self.slow_vendor(worker, pool) for pool in self.sizes.slow_pools]
            self.long_run(worker)
            self.memory.sample(worker, "end")
        return {
            "broker": self.stack.broker,
            "worker": worker.display,
            "sizes": asdict(self.sizes),
            "throughput": {name: _throughput(drains) for name, drains in self.runs.items()},
            "ratios": {
                "send_over_noop": _ratios(self.runs["send"], self.runs["noop"]),
                "one_member_over_send": _ratios(self.runs["one_member"], self.runs["send"]),
            },
            "latency": latency,
            "slow_vendor": {"latency_ms": SLOW_VENDOR_MS, "pools": slow},
            "memory": self.memory.summary(),
            "cost": {name: cost(drains) for name, drains in self.runs.items()},
        }

    def drain(self, worker: Worker, name: str, jobs: list[dict] | None, **kw: Any) -> Drain:
        n = self.sizes.noop if jobs is None else len(jobs)
        drain = self.stack.drain(worker, name, n, jobs, **kw)
        self.memory.ran(drain, sends=jobs is not None)
        wrong = {k: v for k, v in drain.statuses.items() if k != "completed"}
        if wrong:
            self.say(f"warning: {name}: not every job completed: {wrong}")
        return drain

    def sends(self, prefix: str, n: int | None = None, *, one_member: bool = False) -> list:
        members = self.members[:1] if one_member else self.members
        return postcards(members, n or self.sizes.send, self.tag(prefix))

    def round(self, worker: Worker, r: int) -> None:
        """(a), (b), (c) back to back. The first round also counts PostgreSQL transactions:
        (a) and (b) are the first to touch the database, so their windows start clean."""
        for name, jobs in (
            ("noop", None),
            ("send", self.sends("b")),
            ("one_member", self.sends("c", one_member=True)),
        ):
            accounted = r == 0 and name != "one_member"
            self.runs[name].append(self.drain(worker, name, jobs, accounted=accounted))
        if r == 0:
            self.memory.sample(worker, "after round 1 (warm)")
        self.say(f"round {r + 1}/{self.sizes.rounds}: "
                 + ", ".join(f"{k} {v[-1].rate:,.1f}/s" for k, v in self.runs.items()))  # fmt: skip

    def slow_vendor(self, production: Worker, pool: Pool) -> dict[str, Any]:
        """(e): a worker with ``pool`` against a vendor answering in ~250 ms, and right
        before it (b) again on the production worker, so the two see the same load."""
        result: dict[str, Any] = {"pool": pool.label}
        n = self.sizes.slow
        try:
            with running(self.stack, pool, CREDITS_STUB_LATENCY_MS=str(SLOW_VENDOR_MS)) as slow:
                slow.pause()
                paired = self.drain(production, "send (paired)", self.sends("eb", n))
                production.pause()
                warm = self.sends("ew", min(pool.concurrency, SLOW_WARM_UP))
                self.stack.drain(slow, "warm-up", len(warm), warm)
                drain = self.stack.drain(slow, pool.label, n, self.sends("e", n))
                result.update(rate=drain.rate, send_rate=paired.rate, jobs=n,
                              seconds=drain.seconds, statuses=drain.statuses,
                              cpu_ms_per_job=cost([drain])["cpu_ms_per_job"],
                              memory=slow.memory())  # fmt: skip
                errors = [line for line in slow.log_tail(400).splitlines() if "ERROR" in line]
                if errors:
                    result["log_errors"] = errors[-5:]
        except (RuntimeError, SystemExit) as exc:
            result["error"] = str(exc)[-2000:]
        finally:
            production.resume()
        self.say(f"(e) {pool.label}: " + (
            f"{result['rate']:,.1f} jobs/s, (b) {result['send_rate']:,.1f} jobs/s"
            if "rate" in result else "failed"))  # fmt: skip
        return result

    def latency(self, worker: Worker) -> dict[str, Any]:
        """(d): publish at a steady half of (b)'s rate to the running worker; from each
        ``send_action`` returning to the ``at`` of the job's final event."""
        rate = spread([d.rate for d in self.runs["send"]])["median"] / 2
        n = max(20, round(rate * self.sizes.latency_s))
        jobs = self.sends("d", n)
        returned, finals = self.stack.push(jobs, rate)
        self.memory.ran(n, sends=True)
        ms = [(float(finals[job_key(job)]["at"]) - t) * 1000
              for job, t in zip(jobs, returned, strict=True)]  # fmt: skip
        result = {
            "jobs": n,
            "target_rate": rate,
            "rate": (n - 1) / (returned[-1] - returned[0]),
            "p50_ms": percentile(ms, 0.50),
            "p99_ms": percentile(ms, 0.99),
            "max_ms": max(ms),
            "statuses": dict(Counter(e["status"] for e in finals.values())),
        }
        self.say(f"(d) p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms")
        return result

    def long_run(self, worker: Worker) -> None:
        """(f): more (b) jobs until the production worker has run ``rss_jobs`` of them."""
        while self.memory.sends < self.sizes.rss_jobs:
            batch = min(RSS_BATCH, self.sizes.rss_jobs - self.memory.sends)
            self.stack.push(self.sends("f", batch))
            self.memory.ran(batch, sends=True)
            self.memory.sample(worker, f"after {self.memory.sends:,} send_action jobs")
            self.say(
                f"(f) {self.memory.sends:,} jobs, RSS {worker.memory()['rss'] / 2**20:,.0f} MB"
            )


def cost(drains: list[Drain]) -> dict[str, Any]:
    """Per job: Redis commands (publish and drain; every run counts, the count is exact),
    the vendor's Redis commands, CPU time by process, and PostgreSQL transactions and rows
    (from the runs that waited for the statistics to settle)."""
    jobs = sum(d.jobs for d in drains)
    fields = ("redis_publish", "redis_drain", "vendor", "cpu")
    publish, drain, vendor, cpu = (_sum(getattr(d, f) for d in drains) for f in fields)
    both = publish + drain
    out: dict[str, Any] = {
        "jobs": jobs,
        "redis_per_job": both.total() / jobs,
        "redis_publish_per_job": publish.total() / jobs,
        "redis_drain_per_job": drain.total() / jobs,
        "redis_commands": {k: v / jobs for k, v in both.most_common()},
        "vendor_redis_per_job": vendor.total() / jobs,
        "vendor_commands": {k: v / jobs for k, v in vendor.most_common()},
        "cpu_ms_per_job": {k: 1000 * v / jobs for k, v in cpu.items()},
    }
    accounted = [d for d in drains if d.pg is not None]
    if accounted:
        n = sum(d.jobs for d in accounted)
        out["pg_jobs"] = n
        out["pg_per_job"] = {k: v / n for k, v in _sum(d.pg for d in accounted).items()}
    return out


def _sum(counts: Any) -> Counter:
    total: Counter = Counter()
    for c in counts:
        total.update(c)
    return total


def _throughput(drains: list[Drain]) -> dict[str, Any]:
    return {**spread([d.rate for d in drains]), "jobs": drains[0].jobs,
            "all": [d.as_dict() for d in drains]}  # fmt: skip


def _ratios(top: list[Drain], bottom: list[Drain]) -> dict[str, Any]:
    """Per round (the two figures ran minutes apart at most), and of the medians."""
    per_round = [t.rate / b.rate for t, b in zip(top, bottom, strict=True)]
    medians = spread([t.rate for t in top])["median"] / spread([b.rate for b in bottom])["median"]
    return {**spread(per_round), "of_medians": medians, "per_round": per_round}
