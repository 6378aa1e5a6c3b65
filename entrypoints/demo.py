"""The embedded demo: the whole system on one laptop, no servers.

SQLite, Celery's in-process ``memory://`` broker and an in-process fakeredis for locks
and events; a real Celery worker (thread pool) runs the real task code. With a database
URL and a Redis URL it runs the same scenario against real servers and a worker process.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import func, select

from entrypoints.cli import render
from entrypoints.processes import stop_group
from shared.client import CreditsClient
from shared.config import Settings, load_settings
from shared.db import Database
from shared.migrations import upgrade
from shared.models import Hold, HoldState, Job
from shared.queues import QUEUE_NAMES
from shared.services import balances, directory, ledger
from shared.services.reconcile import reconcile
from worker import recovery
from worker.resources import resources_for

DEMO_SEED = 2026
DEMO_STUB = {
    "stub_delivered_rate": 0.84,
    "stub_rejected_rate": 0.06,
    "stub_transient_rate": 0.07,
    "stub_timeout_rate": 0.03,
    "stub_latency_ms": 2.0,
    "stub_pending_s": 0.5,
    "stub_seed": DEMO_SEED,
}
# Short clocks so the demo's recovery sweeps settle in-doubt jobs within seconds.
DEMO_CLOCKS = {
    "retry_backoff_base_s": 0.05,
    "retry_backoff_max_s": 0.4,
    "vendor_timeout_s": 0.5,
    "job_lock_timeout_s": 3.0,
    "in_doubt_after_s": 3.5,
    "resume_lease_s": 0.5,
}
US = [
    ("Jane Roe", "1 Main St", "Springfield", "IL", "62701", "US"),
    ("Sam Lee", "77 Market St", "San Francisco", "CA", "94105", "United States"),
]
ABROAD = [("Ann Smith", "2 High St", "Leeds", None, "LS1 1AA", "United Kingdom"),
          ("Lukas Meyer", "Hauptstr. 5", "Berlin", None, "10115", "DE"),
          ("Aiko Sato", "1-1 Chiyoda", "Tokyo", None, "100-0001", "Japan"),
          ("Marie Dubois", "3 Rue Cler", "Paris", None, "75007", "france")]  # fmt: skip
RETURN = {"name": "Northwind Outreach", "line1": "500 Pine St", "city": "Seattle",
          "region": "WA", "postal_code": "98101", "country": "US"}  # fmt: skip


SHORT = {"completed": "done", "refunded": "refunded", "awaiting_credits": "parked",
         "submitted": "sent", "received": "new", "reserved": "held"}  # fmt: skip


@dataclass
class World:
    account_id: int
    members: dict[str, int]
    starved: int  # a member given too little, whose jobs park until a top-up


def address(rng: random.Random) -> dict[str, str]:
    name, line1, city, region, postal, country = rng.choice(US if rng.random() < 0.6 else ABROAD)
    found = {"name": name, "line1": line1, "city": city, "region": region,
             "postal_code": postal, "country": country}  # fmt: skip
    return {k: v for k, v in found.items() if v}


def make_job(rng: random.Random, n: int, member_id: int) -> dict[str, Any]:
    action = rng.choices(
        ["handwritten_note", "postcard", "gift_card", "email", "task", "linkedin", "accept_lead"],
        weights=[20, 30, 10, 15, 10, 10, 5],
    )[0]
    flow = rng.randint(1, 12)
    job: dict[str, Any] = {
        "job_id": f"demo-{n:04d}",
        "member_id": member_id,
        "action": action,
        "flow_id": f"flow-{flow}",
        "step_id": f"flow-{flow}:step-{rng.randint(1, 6)}",
        "source": "instant" if rng.random() < 0.15 else "flow",
    }
    if action == "handwritten_note":
        job |= {"message": "Loved our chat - talk soon!", "recipient": address(rng),
                "return_address": RETURN}  # fmt: skip
    elif action == "postcard":
        job |= {"message": "Greetings from Seattle", "recipient": address(rng),
                "address_kind": rng.choice(["company", "home"])}  # fmt: skip
    elif action == "gift_card":
        job |= {"brand": rng.choice(["Blue Bottle", "Amazon", "Uber Eats"]),
                "denomination": rng.choice([10, 25, 50]), "message": "A small thank you",
                "recipient": address(rng), "return_address": RETURN}  # fmt: skip
    elif action == "email":
        job |= {"to": "prospect@example.com", "subject": "Quick question", "body": "Hi!"}
    elif action == "task":
        job |= {"title": "Call back about pricing"}
    elif action == "linkedin":
        job |= {"profile_url": "https://www.linkedin.com/in/example", "message": "Hi there"}
    else:
        job |= {"lead_id": f"lead-{n}"}
    return job


def build_world(db: Database) -> World:
    # Keys are scoped to the account, and each run makes a new account: a second run on
    # the same database is a second customer, not a conflict.
    account = directory.create_account(db, "Northwind Outreach")
    ledger.topup(db, account.id, 6000, key="demo-purchase")
    sales = directory.create_workspace(db, account.id, "Sales")
    success = directory.create_workspace(db, account.id, "Customer Success")
    ledger.allocate(db, "workspace", sales.id, amount=3200)
    ledger.allocate(db, "workspace", success.id, set_to=1800)
    members: dict[str, int] = {}
    for ws, people in ((sales.id, [("Ava", "owner", 900), ("Ben", "admin", 800),
                                   ("Chloe", "member", 700), ("Dev", "member", 600)]),
                       (success.id, [("Emma", "admin", 700), ("Finn", "member", 600),
                                     ("Gia", "member", 6)])):  # fmt: skip
        for name, role, credits in people:
            members[name] = directory.add_member(db, ws, name, role=role).id
            ledger.allocate(db, "member", members[name], amount=credits)
    return World(account.id, members, members["Gia"])


class Demo:
    def __init__(self, settings: Settings, jobs: int, console: Console) -> None:
        self.settings = settings
        self.jobs = jobs
        self.console = console
        self.res = resources_for(settings)
        self.db = self.res.db
        self.client = CreditsClient(settings=settings)

    def run(self, start_worker, then: Callable[[World], object] | None = None) -> bool:
        """Run the scenario; ``then(world)`` runs afterwards, while the worker still runs."""
        # Both servers answer before anything is written: a demo that cannot finish does
        # not leave half a world in a real database.
        self.res.redis.ping()
        upgrade(self.settings.database_url)
        world = build_world(self.db)
        self.console.print(
            f"[bold]Account {world.account_id}[/bold]: 6000 credits, 2 workspaces, "
            f"{len(world.members)} members. Sending {self.jobs} jobs...\n"
        )
        rng = random.Random(DEMO_SEED)
        people = [m for name, m in world.members.items() if name != "Gia"]
        started = time.monotonic()
        with start_worker():
            with self._progress() as bar:
                for n in range(self.jobs):
                    member = world.starved if n % 25 == 0 else rng.choice(people)
                    self.client.send_action(make_job(rng, n, member))
                self._settle(bar)
            self._recover(world)
            ok = self._report(world, time.monotonic() - started)
            if then is not None:
                then(world)
        return ok

    @contextmanager
    def _progress(self) -> Iterator[Any]:
        with Progress(
            TextColumn("[bold]settled"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[counts]}"), console=self.console,
        ) as progress:  # fmt: skip
            yield progress

    def _counts(self) -> Counter:
        with self.db.unit_of_work() as session:
            rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
        return Counter({status: n for status, n in rows})

    def _settle(self, progress: Progress, timeout_s: float = 120.0) -> None:
        """Wait until every job is final, parked, or in doubt with the vendor."""
        task = progress.add_task("jobs", total=self.jobs, counts="")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            counts = self._counts()
            settled = sum(counts[s] for s in ("completed", "refunded", "rejected", "expired",
                                               "awaiting_credits"))  # fmt: skip
            in_doubt = self._in_doubt()
            shown = " ".join(f"{SHORT.get(k, k)}:{v}" for k, v in sorted(counts.items()))
            progress.update(task, completed=settled + in_doubt, counts=shown)
            if settled + in_doubt >= self.jobs:
                return
            time.sleep(0.25)
        raise TimeoutError(f"the demo's jobs did not settle in time: {dict(self._counts())}")

    def _in_doubt(self) -> int:
        with self.db.unit_of_work() as session:
            return session.scalar(
                select(func.count()).where(Job.status == "submitted", Job.last_error.like("%time%"))
            )

    def _recover(self, world: World) -> None:
        """What beat does on a schedule, run by hand: top up, resume, resolve."""
        parked = self._counts()["awaiting_credits"]
        ledger.topup(self.db, world.account_id, 200, key="demo-topup-2")
        # From the CS pool; the allocation asks the workers to resume her jobs at once.
        ledger.allocate(self.db, "member", world.starved, amount=150,
                        on_member_funded=self._resume)  # fmt: skip
        self.console.print(
            f"\n{parked} of Gia's jobs are parked: she was given only 6 credits. Support tops "
            "the account up by 200, her workspace admin gives her 150, and the recovery sweeps "
            "resume her jobs and ask the vendor about jobs whose reply timed out..."
        )

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            recovery.resume_awaiting(self.res)
            recovery.resolve_in_doubt(self.res)
            counts = self._counts()
            if (
                counts["submitted"] == 0
                and counts["awaiting_credits"] == 0
                and (counts["received"] == 0 and counts["reserved"] == 0)
            ):
                return
            time.sleep(0.3)

    def _resume(self, member_id: int) -> None:
        recovery.resume_awaiting(self.res, member_id=member_id)

    def _report(self, world: World, elapsed_s: float) -> bool:
        tree = balances.tree(self.db, world.account_id)
        self.console.print()
        render.tree(self.console, tree)
        counts = self._counts()
        with self.db.unit_of_work() as session:
            by_state = dict(
                session.execute(
                    select(Hold.state, func.sum(Hold.amount)).group_by(Hold.state)
                ).all()
            )
        outcomes = Table("outcome", "jobs", title="Outcomes")
        for status, n in sorted(counts.items()):
            outcomes.add_row(status, str(n))
        self.console.print(outcomes)
        report = reconcile(self.db)
        money = Table("credits", "amount", title="Money")
        money.add_row("spent (captured)", str(by_state.get(HoldState.CAPTURED.value, 0)))
        money.add_row("refunded (released)", str(by_state.get(HoldState.RELEASED.value, 0)))
        money.add_row("still held", str(by_state.get(HoldState.HELD.value, 0)))
        money.add_row("purchased", str(report.figures["purchased"]))
        self.console.print(money)
        verdict = "[green]reconcile OK[/green]" if report.ok else "[red]reconcile FAILED[/red]"
        self.console.print(
            f"{verdict}: {report.figures['entries']} ledger entries, "
            f"{self.jobs} jobs in {elapsed_s:.1f}s"
        )
        for problem in report.problems:
            self.console.print(f"[red]drift[/red] {problem.message}")
        return report.ok


def embedded_settings(database_url: str | None, redis_url: str | None) -> Settings:
    base: dict[str, Any] = {**DEMO_STUB, **DEMO_CLOCKS}
    if database_url is None:
        path = Path(tempfile.mkdtemp(prefix="credits-demo-")) / "demo.db"
        base["database_url"] = f"sqlite:///{path}"
    else:
        base["database_url"] = database_url
    if redis_url is None:
        base |= {"redis_url": f"memory://demo-{uuid.uuid4().hex[:8]}", "broker_url": "memory://"}
    else:
        base |= {"redis_url": redis_url, "broker_url": redis_url}
    base["key_prefix"] = f"demo{uuid.uuid4().hex[:6]}:"
    # The demo is its own producer and worker: it makes a signing key for this run only.
    base["job_signing_key"] = f"demo:{secrets.token_urlsafe(32)}"
    return load_settings(**base)


@contextmanager
def thread_worker(settings: Settings) -> Iterator[None]:
    """A real Celery worker, thread pool, in this process: for the embedded mode."""
    from celery.contrib.testing.worker import start_worker

    from worker.factory import create_app

    app = create_app(settings)
    options = {
        "loglevel": "ERROR",
        "shutdown_timeout": 30,
        "hostname": "demo@localhost",
    }
    with start_worker(app, pool="threads", concurrency=4, perform_ping_check=False, **options):
        yield


@contextmanager
def process_worker(settings: Settings) -> Iterator[None]:
    """``celery -A worker worker`` as a child process: for runs against real servers."""
    env = {**os.environ, **settings_env(settings)}
    with tempfile.NamedTemporaryFile(prefix="credits-demo-worker-", suffix=".log") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker", "worker", "--loglevel=WARNING",
             "-Q", ",".join(QUEUE_NAMES), "-c", "2", "--without-mingle", "--without-gossip"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            yield
        finally:
            stop_group(proc)


def settings_env(settings: Settings) -> dict[str, str]:
    data = settings.model_dump(exclude_none=True)
    env = {f"CREDITS_{k.upper()}": str(v) for k, v in data.items()}
    env["CREDITS_JOB_SIGNING_KEY"] = settings.job_signing_key.get_secret_value()
    return env


def run_demo(
    *,
    jobs: int = 500,
    database_url: str | None = None,
    redis_url: str | None = None,
    serve_port: int | None = None,
) -> bool:
    console = Console()
    settings = embedded_settings(database_url, redis_url)
    mode = "embedded (SQLite, in-process broker and locks)" if redis_url is None else "servers"
    console.rule(f"credits demo: {mode}")
    demo = Demo(settings, jobs, console)

    def worker():
        return thread_worker(settings) if redis_url is None else process_worker(settings)

    then = None
    if serve_port is not None:
        from entrypoints.api.demo import serve_team_page

        def then(world: World) -> None:
            serve_team_page(demo.settings, world, serve_port, console)

    try:
        return demo.run(worker, then)
    finally:
        demo.client.close()
        if redis_url is not None:  # leave the real Redis as we found it
            _delete_keys(demo.res.redis, settings.key_prefix)
        demo.res.close()
        if database_url is None:  # the embedded run's SQLite file is ours to remove
            shutil.rmtree(Path(settings.database_url.removeprefix("sqlite:///")).parent, True)


def _delete_keys(redis: Any, prefix: str) -> None:
    for key in redis.scan_iter(match=f"{prefix}*", count=1000):
        redis.delete(key)
