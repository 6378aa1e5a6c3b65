"""Throughput of the ledger and the send pipeline, as ratios to a baseline from the same run.

The baseline is the least any reservation can cost on that database: one conditional
UPDATE of a balance plus one INSERT, committed, in hand-written SQL. Every other figure
is printed as ops/s and as a multiple of that baseline's time per op, so the numbers
compare across machines. Runs on SQLite always and on PostgreSQL when it answers
(CREDITS_BENCH_PG_URL, default postgresql://postgres@127.0.0.1:5432/postgres).

    python -m bench [--ops N]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import closing, suppress
from pathlib import Path

from sqlalchemy import text

from shared.config import load_settings
from shared.db import Database
from shared.migrations import upgrade
from shared.services import directory, ledger

PG_ADMIN = os.environ.get("CREDITS_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def funded(db: Database, credits: int) -> int:
    account = directory.create_account(db, "Bench")
    ledger.topup(db, account.id, credits)
    ws = directory.create_workspace(db, account.id, "Bench")
    member = directory.add_member(db, ws.id, "Bench")
    ledger.allocate(db, "workspace", ws.id, amount=credits)
    ledger.allocate(db, "member", member.id, amount=credits)
    return member.id


def timed(n: int, op: Callable[[int], object]) -> float:
    start = time.perf_counter()
    for i in range(n):
        op(i)
    return (time.perf_counter() - start) / n


def baseline(db: Database, n: int) -> float:
    with db.engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS bench_wallet (id INT PRIMARY KEY, v BIGINT)"))
        conn.execute(text("CREATE TABLE IF NOT EXISTS bench_hold (k VARCHAR(64) PRIMARY KEY)"))
        conn.execute(text("DELETE FROM bench_wallet"))
        conn.execute(text("INSERT INTO bench_wallet VALUES (1, :v)"), {"v": 10 * n})
    run = uuid.uuid4().hex[:8]

    def op(i: int) -> None:
        with db.engine.begin() as conn:
            conn.execute(text("UPDATE bench_wallet SET v = v - 1 WHERE id = 1 AND v >= 1"))
            conn.execute(text("INSERT INTO bench_hold VALUES (:k)"), {"k": f"{run}-{i}"})

    return timed(n, op)


def hold_capture(db: Database, n: int) -> float:
    member = funded(db, 10 * n)
    run = uuid.uuid4().hex[:8]

    def op(i: int) -> None:
        ledger.hold(db, f"b-{run}-{i}", member, 5)
        ledger.capture(db, f"b-{run}-{i}")

    return timed(n, op)


def pipeline(db: Database, url: str, n: int) -> float:
    from worker.demo import make_job
    from worker.pipeline import SendPipeline
    from worker.resources import Resources

    settings = load_settings(
        database_url=url, redis_url=f"memory://bench-{uuid.uuid4().hex[:6]}",
        broker_url="memory://", stub_latency_ms=0, stub_delivered_rate=1,
        stub_rejected_rate=0, stub_transient_rate=0, stub_timeout_rate=0,
    )  # fmt: skip
    member = funded(db, 100 * n)
    rng = random.Random(1)
    jobs = [make_job(rng, i, member) | {"job_id": f"p-{uuid.uuid4().hex}"} for i in range(n)]
    pipe = SendPipeline(Resources(settings))
    return timed(n, lambda i: pipe.process(jobs[i]))


def report(name: str, base_s: float, rows: list[tuple[str, float]]) -> None:
    print(f"\n{name}: baseline (bare conditional UPDATE + INSERT) {1 / base_s:,.0f} ops/s")
    print(f"  {'operation':<34}{'ops/s':>10}{'x baseline time':>18}")
    for label, per_op in rows:
        print(f"  {label:<34}{1 / per_op:>10,.0f}{per_op / base_s:>17.1f}x")


def bench_db(name: str, url: str, n: int) -> None:
    upgrade(url)
    db = Database(url)
    try:
        base = baseline(db, n)
        rows = [
            ("ledger hold + capture (2 txns)", hold_capture(db, n)),
            ("pipeline, one job end to end", pipeline(db, url, n)),
        ]
        report(name, base, rows)
    finally:
        db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench_db("SQLite", f"sqlite:///{Path(tmp) / 'bench.db'}", args.ops)
    import psycopg

    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        print(f"\nPostgreSQL: skipped ({exc})")
        return
    name = f"credits_bench_{uuid.uuid4().hex[:8]}"
    with closing(admin):
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            bench_db("PostgreSQL", PG_ADMIN.rsplit("/", 1)[0] + f"/{name}", args.ops)
        finally:
            with suppress(psycopg.Error):
                admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
