"""Crashes, kills, restarts and outages lose nothing: real workers, beat, Redis, PostgreSQL.

Every test ends with the same proof (``assert_books``): every job is final; each
member's captured credits equal the costs of their delivered jobs; no job was sent to
the vendor twice; the flow engine heard exactly one final event per job; reconcile is OK.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from contextlib import closing

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from shared.client import CreditsClient
from shared.config import FAULT_ARMING_PHRASE
from shared.db import Database
from shared.events import EventStream
from shared.models import Hold, Job, LedgerTransaction, Member
from shared.redis_client import make_redis
from shared.services.reconcile import reconcile
from tests.factories import funded_member
from tests.integration.harness import wait_until
from tests.integration.test_pipeline_workers import MIX_RATES, job_counts, make_job
from tests.services import pg_admin, private_redis
from worker.fulfilment import StubProvider, StubRates

FINAL = ("completed", "refunded", "rejected", "expired")
# Clocks short enough that recovery happens within a test, long enough for 2 cores.
FAST_RECOVERY = {
    "CREDITS_VENDOR_TIMEOUT_S": "1",
    "CREDITS_JOB_LOCK_TIMEOUT_S": "3",
    "CREDITS_IN_DOUBT_AFTER_S": "4",
    "CREDITS_STALE_AFTER_S": "8",
    "CREDITS_RESUME_LEASE_S": "2",
    "CREDITS_RESOLVE_EVERY_S": "1",
    "CREDITS_RESUME_EVERY_S": "1",
    "CREDITS_REPUBLISH_EVERY_S": "2",
    "CREDITS_RECONCILE_EVERY_S": "5",
    "CREDITS_TASK_TIME_LIMIT_S": "20",
    "CREDITS_VISIBILITY_TIMEOUT_S": "30",
    "CREDITS_RESTORE_INTERVAL_S": "1",
    "CREDITS_STUB_PENDING_S": "1",
    "CREDITS_BEAT_LOCK_TIMEOUT_S": "6",
    "CREDITS_HOLD_TTL_S": "60",
}


def send_jobs(stack, members, n: int, *, seed: int = 11, prefix: str = "job") -> list[dict]:
    client = CreditsClient(settings=stack.settings())
    rng = random.Random(seed)
    jobs = [make_job(rng, f"{prefix}-{i}", rng.choice(members).member_id) for i in range(n)]
    for job in jobs:
        client.send_action(job)
    client.close()
    return jobs


def all_final(db: Database, n: int) -> bool:
    """Every job final, and the flow engine told (the notify sweep confirms each event)."""
    try:
        return _all_final(db, n)
    except OperationalError:  # the test's own connection was dropped: the pool reconnects
        return False


def _all_final(db: Database, n: int) -> bool:
    counts = job_counts(db)
    if sum(counts[s] for s in FINAL) != n:
        return False
    with db.unit_of_work() as session:
        return session.scalar(select(func.count()).where(Job.notified_at.is_(None))) == 0


def assert_books(stack, db: Database, jobs_sent: list[dict]) -> None:
    settings = stack.settings()
    stub = StubProvider(make_redis(stack.redis_url), StubRates.from_settings(settings),
                        prefix=settings.key_prefix)  # fmt: skip
    with db.unit_of_work() as session:
        rows = {j.job_id: j for j in session.scalars(select(Job))}
        captured = dict(
            session.execute(
                select(Member.id, func.sum(LedgerTransaction.amount))
                .join(Member, Member.wallet_id == LedgerTransaction.debit_wallet_id)
                .where(LedgerTransaction.kind == "capture")
                .group_by(Member.id)
            ).all()
        )
        open_holds = session.scalar(select(func.count()).where(Hold.state == "held"))
    assert set(rows) == {j["job_id"] for j in jobs_sent}
    assert {j.status for j in rows.values()} <= set(FINAL), Counter(j.status for j in rows.values())
    delivered = Counter()
    for job in rows.values():
        if job.status == "completed":
            delivered[job.member_id] += job.cost
    assert {m: c for m, c in captured.items() if c} == {m: c for m, c in delivered.items() if c}
    assert open_holds == 0
    double_sends = [jid for jid in rows if stub.sends(jid) > 1]
    assert double_sends == []
    for jid, job in rows.items():
        if job.status == "completed":
            assert stub.sends(jid) == 1, jid
    events = list(EventStream(make_redis(stack.redis_url), settings.stream).all())
    finals = Counter(e["job_id"] for e in events if e["final"] == "1")
    assert set(finals) == set(rows)
    assert max(finals.values()) == 1
    report = reconcile(db)
    assert report.ok, report.problems


def funded_members(db: Database, n: int = 5) -> list:
    return [funded_member(db, account_credits=6000, member_credits=5000, name=f"M{i}")
            for i in range(n)]  # fmt: skip


@pytest.mark.parametrize(
    "point", ["after_hold", "after_vendor_accepted", "before_capture", "after_capture_before_event"]
)
def test_a_worker_crashing_at_each_step_loses_nothing(stack, db, point):
    stack.settings_env.update(MIX_RATES | FAST_RECOVERY)
    crash = {"CREDITS_FAULT_CRASH_AT": point, "CREDITS_FAULT_CRASH_EVERY": "15",
             "CREDITS_FAULT_ARMED": FAULT_ARMING_PHRASE}  # fmt: skip
    members = funded_members(db)
    jobs = send_jobs(stack, members, 200, prefix=point)
    stack.start_worker("w1", **crash)
    stack.start_beat()

    wait_until(lambda: all_final(db, 200), 240, f"200 jobs final with crashes at {point}", 0.5)
    crashes = int(make_redis(stack.redis_url).get(f"{stack.key_prefix}fault:{point}") or 0)
    assert crashes >= 15  # the fault really fired, many times (every 15th hit dies)
    assert b"fault injection: crashing at" in stack.workers[0].log_path.read_bytes()
    assert_books(stack, db, jobs)


def test_sigkill_of_the_whole_worker_ten_times_during_a_thousand_jobs(stack, db):
    stack.settings_env.update(MIX_RATES | FAST_RECOVERY)
    members = funded_members(db, 10)
    jobs = send_jobs(stack, members, 1000, prefix="kill")
    worker = stack.start_worker("w1")
    stack.start_beat()
    kills = 0
    while kills < 10:
        time.sleep(1.5)
        worker.kill()  # SIGKILL to the process group: parent and children at once
        kills += 1
        worker.restart()
    wait_until(lambda: all_final(db, 1000), 400, "1000 jobs final after 10 SIGKILLs", 1.0)
    assert kills == 10
    assert_books(stack, db, jobs)


def test_a_redis_restart_during_a_run_loses_nothing(stack, db, tmp_path):
    # A private Redis with an append-only file, as in docker-compose: a restart keeps
    # the queues, the unacked messages and the event stream.
    proc, port = private_redis(tmp_path, appendonly=True)
    try:
        stack.redis_url = f"redis://127.0.0.1:{port}/0"
        stack.settings_env.update(MIX_RATES | FAST_RECOVERY)
        members = funded_members(db)
        jobs = send_jobs(stack, members, 300, prefix="redis")
        stack.start_worker("w1")
        stack.start_beat()
        stack.supervise()  # beat exits when it cannot renew its lock; compose restarts it
        wait_until(lambda: sum(job_counts(db).values()) > 50, 60, "the run to get going")
        proc.terminate()
        proc.wait(20)
        time.sleep(2)
        proc, _ = private_redis(tmp_path, appendonly=True, port=port)
        wait_until(lambda: all_final(db, 300), 300, "300 jobs final after a Redis restart", 1.0)
        assert_books(stack, db, jobs)
        assert b"Connected to redis" in stack.workers[0].log_path.read_bytes()
    finally:
        stack.stop()
        proc.kill()
        proc.wait(10)


def test_dropped_postgresql_connections_lose_nothing(stack, db):
    stack.settings_env.update(MIX_RATES | FAST_RECOVERY)
    members = funded_members(db)
    jobs = send_jobs(stack, members, 300, prefix="pg")
    stack.start_worker("w1")
    stack.start_beat()
    database = db.engine.url.database
    dropped = 0
    with closing(pg_admin()) as admin:
        for _ in range(6):
            time.sleep(1.0)
            dropped += len(
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (database,),
                ).fetchall()
            )
    assert dropped > 0
    wait_until(lambda: all_final(db, 300), 300, "300 jobs final after dropped connections", 1.0)
    assert_books(stack, db, jobs)


def test_a_vendor_outage_keeps_holds_until_the_vendor_returns(stack, db):
    stack.settings_env.update(MIX_RATES | FAST_RECOVERY | {"CREDITS_RETRY_MAX": "2"})
    settings = stack.settings()
    stub = StubProvider(make_redis(stack.redis_url), StubRates.from_settings(settings),
                        prefix=settings.key_prefix)  # fmt: skip
    members = funded_members(db)
    stub.set_outage(True)
    jobs = send_jobs(stack, members, 100, prefix="outage")
    stack.start_worker("w1")
    stack.start_beat()

    def stuck() -> bool:  # every paid job is held, waiting on the vendor
        counts = job_counts(db)
        return counts["submitted"] == 100

    wait_until(stuck, 120, "all jobs to run out of retries against the outage", 0.5)
    time.sleep(3)  # several resolve sweeps run against the unreachable vendor
    with db.unit_of_work() as session:
        held = session.scalar(select(func.count()).where(Hold.state == "held"))
        paid = session.scalar(select(func.count()).where(Job.cost > 0))
    assert held == paid and job_counts(db)["submitted"] == 100  # nothing guessed
    stub.set_outage(False)
    wait_until(lambda: all_final(db, 100), 120, "jobs to resolve once the vendor is back", 0.5)
    assert job_counts(db)["refunded"] == 100  # never sent: each hold released, nobody charged
    assert_books(stack, db, jobs)


def test_two_beats_started_at_once_do_not_double_fire(stack, db):
    stack.settings_env.update(FAST_RECOVERY)
    stack.start_worker("w1")
    first = stack.start_beat("beat1", wait=False)
    second = stack.start_beat("beat2", wait=False)
    first.wait_ready()
    second.wait_ready()
    redis = make_redis(stack.redis_url)
    key = f"{stack.key_prefix}sweep_runs:credits.resolve_in_doubt"
    wait_until(lambda: int(redis.get(key) or 0) >= 1, 30, "the first resolve sweep")
    start = int(redis.get(key))
    time.sleep(10)
    runs = int(redis.get(key)) - start
    assert 6 <= runs <= 12  # one scheduler at 1/s; two would give ~20
    logs = [b.log_path.read_bytes() for b in (first, second)]
    assert sum(b"beat: Acquired lock" in log for log in logs) == 1
    # and when the lock holder dies, the other takes over
    holder, standby = (first, second) if b"Acquired lock" in logs[0] else (second, first)
    holder.kill()
    wait_until(lambda: b"beat: Acquired lock" in standby.log_path.read_bytes(), 30, "failover")
    before = int(redis.get(key))
    wait_until(lambda: int(redis.get(key)) >= before + 3, 30, "the standby beat to fire")


def test_parked_jobs_resume_after_a_top_up_and_expire_after_their_wait(stack, db):
    from shared.services import ledger

    stack.settings_env.update(FAST_RECOVERY | {"CREDITS_STUB_DELIVERED_RATE": "1",
                              "CREDITS_STUB_REJECTED_RATE": "0", "CREDITS_STUB_TRANSIENT_RATE": "0",
                              "CREDITS_STUB_TIMEOUT_RATE": "0"})  # fmt: skip
    rich = funded_member(db, account_credits=100, member_credits=5, name="Rich")
    poor = funded_member(db, account_credits=10, member_credits=0, name="Poor")
    client = CreditsClient(settings=stack.settings())
    for i in range(4):
        client.send_action({"job_id": f"r{i}", "member_id": rich.member_id,
                            "action": "accept_lead", "lead_id": f"l{i}"})  # fmt: skip
    stack.start_worker("w1", CREDITS_AWAITING_CREDITS_MAX_WAIT_S="600")
    stack.start_beat(CREDITS_AWAITING_CREDITS_MAX_WAIT_S="600")
    wait_until(lambda: job_counts(db)["completed"] == 4, 60, "four leads accepted")
    # given five more leads than the member can pay for
    for i in range(4, 9):
        client.send_action({"job_id": f"r{i}", "member_id": rich.member_id,
                            "action": "accept_lead", "lead_id": f"l{i}"})  # fmt: skip
    wait_until(lambda: job_counts(db)["awaiting_credits"] == 4, 60, "four parked")
    # when an admin gives the member three more credits
    ledger.allocate(db, "workspace", rich.workspace_id, amount=3)
    ledger.allocate(db, "member", rich.member_id, amount=3)
    # then exactly three resume and one keeps waiting
    wait_until(lambda: job_counts(db)["completed"] == 8, 60, "three parked jobs to resume")
    assert job_counts(db)["awaiting_credits"] == 1
    assert poor  # a second member stays untouched
    client.close()


def test_parked_jobs_expire_with_an_event(stack, db):
    stack.settings_env.update(FAST_RECOVERY | {"CREDITS_AWAITING_CREDITS_MAX_WAIT_S": "2"})
    tree = funded_member(db, account_credits=10, member_credits=0)
    client = CreditsClient(settings=stack.settings())
    client.send_action({"job_id": "lead-x", "member_id": tree.member_id,
                        "action": "accept_lead", "lead_id": "l"})  # fmt: skip
    client.close()
    stack.start_worker("w1")
    stack.start_beat()
    wait_until(lambda: job_counts(db)["expired"] == 1, 60, "the parked job to expire")
    events = list(EventStream(make_redis(stack.redis_url), stack.settings().stream).all())
    statuses = [e["status"] for e in events if e["job_id"] == "lead-x"]
    assert statuses == ["awaiting_credits", "expired"]


def test_a_received_job_whose_message_is_gone_is_sent_again(stack, db):
    from shared.schemas import parse_job
    from shared.services import jobs as job_service

    stack.settings_env.update(FAST_RECOVERY)
    tree = funded_member(db, account_credits=10, member_credits=10)
    settings = stack.settings()
    # given a job recorded by a worker whose message then vanished (say, Redis lost it)
    spec = parse_job({"job_id": "lost-1", "member_id": tree.member_id, "action": "task",
                      "title": "t"})  # fmt: skip
    from shared.pricing import catalog_from_settings

    job_service.receive(db, spec, catalog_from_settings(settings))
    stack.start_worker("w1")
    stack.start_beat()
    # then the re-publish sweep sends it again with the same job_id, and it completes
    wait_until(lambda: all_final(db, 1), 60, "the lost job to be re-sent and finish")
    assert job_counts(db)["completed"] + job_counts(db)["refunded"] == 1
