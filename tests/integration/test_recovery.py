"""Crashes, kills, restarts and outages lose nothing: real workers, beat, Redis, PostgreSQL,
and, where the broker decides what survives, each broker (Redis and RabbitMQ).

Every test ends with the same proof (``assert_books``): every job is final; each
member's captured credits equal the costs of their delivered jobs; the vendor sent every
completed job exactly once and nothing else; the flow engine heard exactly one final
event per job; reconcile is OK.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from contextlib import closing

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from shared.config import FAULT_ARMING_PHRASE
from shared.db import Database
from shared.models import Hold, Job, LedgerTransaction, Member
from shared.services import balances, ledger
from shared.services.reconcile import reconcile
from shared.services.recovery import vendor_key
from tests.factories import (
    ALL_DELIVERED,
    MIX_RATES,
    as_env,
    funded_member,
    funded_members,
    job_counts,
    mixed_jobs,
    note,
)
from tests.helpers import wait_until
from tests.integration.harness import FAST_RECOVERY, on_both_brokers
from tests.services import pg_admin, private_redis

FINAL = ("completed", "refunded", "rejected", "expired")


def send_jobs(stack, members: list[int], n: int, *, prefix: str) -> list[dict]:
    jobs = mixed_jobs(members, n, prefix=prefix)
    client = stack.client()
    for job in jobs:
        client.send_action(job)
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
    stub = stack.stub()
    with db.unit_of_work() as session:
        rows = {(j.member_id, j.job_id): j for j in session.scalars(select(Job))}
        captured = dict(
            session.execute(
                select(Member.id, func.sum(LedgerTransaction.amount))
                .join(Member, Member.wallet_id == LedgerTransaction.debit_wallet_id)
                .where(LedgerTransaction.kind == "capture")
                .group_by(Member.id)
            ).all()
        )
        open_holds = session.scalar(select(func.count()).where(Hold.state == "held"))
    assert set(rows) == {(j["member_id"], j["job_id"]) for j in jobs_sent}
    assert {j.status for j in rows.values()} <= set(FINAL), Counter(j.status for j in rows.values())
    delivered = Counter()
    for job in rows.values():
        if job.status == "completed":
            delivered[job.member_id] += job.cost
    assert {m: c for m, c in captured.items() if c} == {m: c for m, c in delivered.items() if c}
    assert open_holds == 0
    # The vendor sent what was paid for, once, and nothing that was not.
    wrong_sends = {
        key: (job.status, stub.sends(vendor_key(*key)))
        for key, job in rows.items()
        if stub.sends(vendor_key(*key)) != (1 if job.status == "completed" else 0)
    }
    assert wrong_sends == {}
    finals = stack.final_events()
    assert set(finals) == set(rows)
    assert max(finals.values()) == 1
    report = reconcile(db)
    assert report.ok, report.problems


# On RabbitMQ too where the broker decides what comes back: a crash before and after the
# vendor call. The other two points crash in the sweeps and the event step, which do not
# depend on the broker (and cost ~100 s each).
@pytest.mark.parametrize(
    ("point", "broker"),
    [
        (point, "redis")
        for point in (
            "after_hold",
            "after_vendor_accepted",
            "before_capture",
            "after_capture_before_event",
        )
    ]
    + [("after_hold", "amqp"), ("after_vendor_accepted", "amqp")],
    indirect=["broker"],
)
def test_a_worker_crashing_at_each_step_loses_nothing(stack, db, point):
    stack.settings_env.update(as_env(MIX_RATES) | FAST_RECOVERY)
    crash = {"CREDITS_FAULT_CRASH_AT": point, "CREDITS_FAULT_CRASH_EVERY": "15",
             "CREDITS_FAULT_ARMED": FAULT_ARMING_PHRASE}  # fmt: skip
    members = funded_members(db, 5, credits=5000)
    jobs = send_jobs(stack, members, 200, prefix=point)
    stack.start_worker("w1", **crash)
    stack.start_beat()

    wait_until(lambda: all_final(db, 200), 240, f"200 jobs final with crashes at {point}", 0.5)
    crashes = int(stack.redis().get(f"{stack.key_prefix}fault:{point}") or 0)
    assert crashes >= 15  # the fault really fired, many times (every 15th hit dies)
    assert b"fault injection: crashing at" in stack.workers[0].log_path.read_bytes()
    assert_books(stack, db, jobs)


# Each kill strands the worker's unacked messages for the visibility timeout; on a loaded
# 2-core machine the whole run has taken up to ~250 s, over the suite's default limit.
@pytest.mark.timeout(600)
@on_both_brokers
def test_sigkill_of_the_whole_worker_ten_times_during_a_thousand_jobs(stack, db):
    stack.settings_env.update(as_env(MIX_RATES) | FAST_RECOVERY)
    members = funded_members(db, 10, credits=5000)
    jobs = send_jobs(stack, members, 1000, prefix="kill")
    worker = stack.start_worker("w1")
    stack.start_beat()
    kills = 0
    while kills < 10:
        time.sleep(1.5)
        worker.kill()  # SIGKILL to the process group: parent and children at once
        kills += 1
        worker.restart()
    wait_until(lambda: all_final(db, 1000), 540, "1000 jobs final after 10 SIGKILLs", 1.0)
    assert kills == 10
    assert_books(stack, db, jobs)


def test_a_redis_restart_during_a_run_loses_nothing(stack, db, tmp_path):
    # A private Redis with an append-only file, as in docker-compose: a restart keeps
    # the queues, the unacked messages and the event stream.
    proc, port = private_redis(tmp_path, appendonly=True)
    try:
        stack.redis_url = f"redis://127.0.0.1:{port}/0"
        stack.settings_env.update(as_env(MIX_RATES) | FAST_RECOVERY)
        members = funded_members(db, 5, credits=5000)
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
        # the worker saw Redis go and reconnected (or compose's restart policy restarted it)
        assert stack.workers[0].log_path.read_bytes().count(b"Connected to") >= 2
    finally:
        stack.stop()
        proc.kill()
        proc.wait(10)


@on_both_brokers
def test_the_broker_unreachable_for_seconds_during_a_run_loses_nothing(stack, db, broker):
    # given a run under way, its broker behind a gate (Redis: the broker only; locks,
    # events and the stub stay up)
    gate = stack.gate_broker()
    stack.settings_env.update(as_env(MIX_RATES) | FAST_RECOVERY)
    members = funded_members(db, 5, credits=5000)
    jobs = send_jobs(stack, members, 300, prefix=f"gate-{broker}")
    stack.start_worker("w1")
    stack.start_beat()
    stack.supervise()  # beat exits when it cannot renew its lock; compose restarts it
    wait_until(lambda: sum(job_counts(db).values()) > 50, 60, "the run to get going")
    # when every broker connection drops and the broker refuses new ones for 5 s, twice
    for _ in range(2):
        gate.cut()
        time.sleep(5)
        gate.restore()
        time.sleep(3)

    # then the broker hands out everything it still has, and every job recorded ends
    # final, once, and the books balance
    # (RabbitMQ requeues whatever was delivered and not acked; on Redis a cut between a
    # worker's BRPOP and its unacked record loses the popped message, kombu#305, and the
    # intake sweep re-sends it after CREDITS_INTAKE_AFTER_S)
    def settled() -> bool:
        return stack.broker_idle() and all_final(db, len(jobs))

    wait_until(settled, 240, "every job final after broker outages", 1.0)
    assert_books(stack, db, jobs)
    assert gate.cuts == 2
    assert stack.workers[0].log_path.read_bytes().count(b"Connected to") >= 2


def test_a_message_popped_by_a_worker_that_died_is_re_sent_from_the_intake_outbox(stack, db):
    # given a job the client published (Redis broker), whose message a worker took off the
    # queue and died with before recording it as unacked (kombu#305): the RPOP below is
    # exactly what such a worker's BRPOP leaves behind
    stack.settings_env.update(
        as_env(ALL_DELIVERED) | FAST_RECOVERY
        | {"CREDITS_INTAKE_AFTER_S": "3", "CREDITS_INTAKE_EVERY_S": "1"}
    )  # fmt: skip
    member = funded_member(db, account_credits=100, member_credits=50).member_id
    stack.client().send_action(note("lost-1", member))
    broker = stack.broker_redis()
    assert broker.rpop(stack.queue_key("credits.flow")) is not None
    assert stack.broker_idle()
    (entry,) = stack.redis().zrange(f"{stack.key_prefix}intake", 0, -1)
    assert json.loads(entry)["job"]["job_id"] == "lost-1"

    # when a worker and beat run
    stack.start_worker("w1")
    stack.start_beat()

    # then the intake sweep re-sends it: done once, charged once, one final event
    wait_until(lambda: all_final(db, 1), 90, "the lost job final", 0.5)
    assert_books(stack, db, [note("lost-1", member)])
    assert [(j.job_id, j.status) for j in all_jobs(db)] == [("lost-1", "completed")]
    assert balances.balance(db, "member", member).available < 50  # charged (once: books)
    logs = "".join(w.log_path.read_text() for w in stack.workers)
    assert logs.count(f"job lost-1 of member {member}: re-sent from the intake outbox") == 1
    redis = stack.redis()  # the re-sent message's task removed the entry
    assert redis.zcard(f"{stack.key_prefix}intake") == 0


def all_jobs(db: Database) -> list[Job]:
    with db.unit_of_work() as session:
        return list(session.scalars(select(Job)))


def test_dropped_postgresql_connections_lose_nothing(stack, db):
    stack.settings_env.update(as_env(MIX_RATES) | FAST_RECOVERY)
    members = funded_members(db, 5, credits=5000)
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


def test_a_vendor_outage_keeps_holds_and_the_resolver_sends_the_jobs_once_it_is_back(stack, db):
    # given a vendor that is down, and workers that give up retrying after two attempts
    stack.settings_env.update(as_env(MIX_RATES) | FAST_RECOVERY | {"CREDITS_RETRY_MAX": "2"})
    stub = stack.stub()
    members = funded_members(db, 5, credits=5000)
    stub.set_outage(True)
    jobs = send_jobs(stack, members, 100, prefix="outage")
    stack.start_worker("w1")
    stack.start_beat()

    def stuck() -> bool:  # every job submitted, and no worker will try it again
        with db.unit_of_work() as session:
            return session.scalar(
                select(func.count()).where(Job.status == "submitted", Job.next_attempt_at.is_(None))
            ) == 100  # fmt: skip

    wait_until(stuck, 120, "all jobs to run out of retries against the outage", 0.5)
    # when several resolve sweeps run against the unreachable vendor
    runs_key = f"{stack.key_prefix}sweep_runs:credits.resolve_in_doubt"
    runs = int(stack.redis().get(runs_key) or 0)
    wait_until(lambda: int(stack.redis().get(runs_key) or 0) >= runs + 3, 30, "3 resolve sweeps")
    # then nothing is guessed: every hold is still held
    with db.unit_of_work() as session:
        held = session.scalar(select(func.count()).where(Hold.state == "held"))
        paid = session.scalar(select(func.count()).where(Job.cost > 0))
    assert held == paid and job_counts(db)["submitted"] == 100

    # when the vendor comes back
    stub.set_outage(False)

    # then the resolver finds the vendor never got them, and sends each of them again:
    # delivered ones are charged, refused ones refunded
    wait_until(lambda: all_final(db, 100), 180, "jobs to resolve once the vendor is back", 0.5)
    with db.unit_of_work() as session:
        republished = list(session.scalars(select(Job.republished)))
    assert min(republished) >= 1
    assert job_counts(db)["completed"] > 0
    assert_books(stack, db, jobs)


def test_two_beats_started_at_once_do_not_double_fire(stack, db):
    stack.settings_env.update(FAST_RECOVERY)
    stack.start_worker("w1")
    first = stack.start_beat("beat1", wait=False)
    second = stack.start_beat("beat2", wait=False)
    first.wait_ready()
    second.wait_ready()
    redis = stack.redis()
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


def lead(job_id: str, member_id: int) -> dict:
    return {"job_id": job_id, "member_id": member_id, "action": "accept_lead",
            "lead_id": f"lead-{job_id}"}  # fmt: skip


def statuses_of(db: Database, member_id: int) -> Counter:
    with db.unit_of_work() as session:
        return Counter(session.scalars(select(Job.status).where(Job.member_id == member_id)))


def test_parked_jobs_resume_after_a_top_up_and_only_that_members(stack, db):
    stack.settings_env.update(FAST_RECOVERY | as_env(ALL_DELIVERED))
    rich = funded_member(db, account_credits=100, member_credits=5, name="Rich")
    poor = funded_member(db, account_credits=10, member_credits=0, name="Poor")
    client = stack.client()
    for i in range(4):
        client.send_action(lead(f"r{i}", rich.member_id))
    stack.start_worker("w1", CREDITS_AWAITING_CREDITS_MAX_WAIT_S="600")
    stack.start_beat(CREDITS_AWAITING_CREDITS_MAX_WAIT_S="600")
    wait_until(lambda: job_counts(db)["completed"] == 4, 60, "four leads accepted")
    # given five more leads than Rich can pay for, and two of Poor's, who has nothing
    for i in range(4, 9):
        client.send_action(lead(f"r{i}", rich.member_id))
    for i in range(2):
        client.send_action(lead(f"p{i}", poor.member_id))
    wait_until(lambda: job_counts(db)["awaiting_credits"] == 6, 60, "six parked")
    # when an admin gives Rich three more credits
    ledger.allocate(db, "workspace", rich.workspace_id, amount=3)
    ledger.allocate(db, "member", rich.member_id, amount=3)
    # then exactly three of Rich's resume and one keeps waiting
    wait_until(lambda: statuses_of(db, rich.member_id)["completed"] == 8, 60, "three resumed")
    assert statuses_of(db, rich.member_id)["awaiting_credits"] == 1
    # and Poor's jobs keep waiting, with nothing taken from Poor's wallet
    assert statuses_of(db, poor.member_id) == Counter({"awaiting_credits": 2})
    wallet = balances.balance(db, "member", poor.member_id)
    assert (wallet.available, wallet.held) == (0, 0)
    assert balances.balance(db, "member", rich.member_id).available == 0


def test_parked_jobs_expire_with_an_event(stack, db):
    stack.settings_env.update(FAST_RECOVERY | {"CREDITS_AWAITING_CREDITS_MAX_WAIT_S": "2"})
    tree = funded_member(db, account_credits=10, member_credits=0)
    stack.client().send_action(lead("lead-x", tree.member_id))
    stack.start_worker("w1")
    stack.start_beat()
    wait_until(lambda: job_counts(db)["expired"] == 1, 60, "the parked job to expire")
    statuses = [e["status"] for e in stack.events()
                if (e["member_id"], e["job_id"]) == (str(tree.member_id), "lead-x")]  # fmt: skip
    assert statuses == ["awaiting_credits", "expired"]
