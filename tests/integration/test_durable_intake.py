"""Durable intake (issue #13): an accepted job is never lost, and a deliverable job is never
refunded -- with real workers, beat, PostgreSQL, Redis and, unless noted, each broker.

The broker is cut with a ``TcpGate`` in front of it (never the machine's own servers).
The resolver waits for a job's next attempt plus the broker's redelivery delay (on Redis
the visibility timeout plus 31 s, on RabbitMQ 90 s) before it acts; where a test needs it
to act, the test moves that job's next attempt back in the database instead of waiting.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from contextlib import closing
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from shared.config import FAULT_ARMING_PHRASE
from shared.db import Database
from shared.errors import BrokerUnavailable
from shared.models import Hold, Job, JobTransition, utcnow
from shared.queues import MAINTENANCE_QUEUE
from shared.services import balances
from shared.services.reconcile import reconcile
from shared.services.recovery import vendor_key
from tests.factories import (
    ALL_DELIVERED,
    as_env,
    funded_member,
    job_counts,
    note,
    recorded_job,
    stub_rates,
)
from tests.helpers import wait_until
from tests.integration.harness import FAST_RECOVERY, on_both_brokers
from tests.services import pg_admin, private_redis

NOTE_COST = 5
# A vendor call long enough to stop a worker in the middle of it (the stub sleeps 0.5x to
# 1.5x this before it records anything), and the clocks that must exceed it.
SLOW_VENDOR = {
    "CREDITS_STUB_LATENCY_MS": "3000",
    "CREDITS_VENDOR_TIMEOUT_S": "5",
    "CREDITS_JOB_LOCK_TIMEOUT_S": "6",
    "CREDITS_IN_DOUBT_AFTER_S": "8",
    # A time limit that outlasts the test's stop: on SIGCONT the call goes on, rather
    # than its (wall-clock) soft time limit firing at once.
    "CREDITS_TASK_TIME_LIMIT_S": "60",
    "CREDITS_VISIBILITY_TIMEOUT_S": "90",
}
SWEEPS_ONLY = MAINTENANCE_QUEUE
RESOLVE_RUNS = "sweep_runs:credits.resolve_in_doubt"


def job_row(db: Database, member_id: int, job_id: str) -> Job | None:
    with db.unit_of_work() as session:
        row = session.scalar(select(Job).where(Job.member_id == member_id, Job.job_id == job_id))
        if row is not None:
            session.expunge(row)
        return row


def status_of(db: Database, member_id: int, job_id: str) -> str | None:
    row = job_row(db, member_id, job_id)
    return row.status if row is not None else None


def hold_state(db: Database, job_id: str) -> str:
    with db.unit_of_work() as session:
        return session.scalar(select(Hold.state).where(Hold.job_id == job_id))


def resolve_runs(stack) -> int:
    return int(stack.redis().get(f"{stack.key_prefix}{RESOLVE_RUNS}") or 0)


def move_next_attempt(stack, db: Database, *, past_window_s: float) -> float:
    """Set every submitted job's next attempt so that the resolver's wait for it -- next
    attempt plus the broker's redelivery delay -- ended ``past_window_s`` ago (a negative
    value: it ends that much later). Returns the wall-clock time it ends (time.time())."""
    delay_s = stack.settings().redelivery_delay_s
    at = utcnow() - timedelta(seconds=delay_s + past_window_s)
    with db.unit_of_work() as session:
        session.execute(update(Job).where(Job.status == "submitted").values(next_attempt_at=at))
        session.commit()
    return time.time() - past_window_s


def assert_charged_once(stack, db: Database, tree, job_id: str, *, status: str) -> None:
    """The job ended ``status``, once: charged (and sent) once if completed, never if not;
    one final event; and the books balance."""
    assert status_of(db, tree.member_id, job_id) == status
    sends = stack.stub().sends(vendor_key(tree.member_id, job_id))
    assert sends == (1 if status == "completed" else 0)
    cost = NOTE_COST if status == "completed" else 0
    wallet = balances.balance(db, "member", tree.member_id)
    assert (wallet.available, wallet.held) == (50 - cost, 0)
    report = reconcile(db)
    assert report.ok, report.problems
    assert report.figures["spent"] == cost
    assert stack.final_events() == Counter({(tree.member_id, job_id): 1})


def started_vendor_call(stack, db: Database, tree, job_id: str, **worker_env: str):
    """Send one note and start a worker; return it once the vendor call is under way."""
    stack.client().send_action(note(job_id, tree.member_id))
    worker = stack.start_worker("w1", concurrency=1, **worker_env)
    wait_until(lambda: status_of(db, tree.member_id, job_id) == "submitted", 60, "the hold")
    return worker


# ---------------------------------------------------------------- no retry is dropped


@on_both_brokers
@pytest.mark.parametrize("outage", ["new_connections_refused", "every_connection_cut"])
def test_a_retry_that_meets_a_broker_outage_is_not_dropped(stack, db, outage):
    # given a vendor that fails transiently once, then delivers, and slowly enough that the
    # test can arm the gate while the first call is under way; on Redis, a message left
    # unacked by the cut comes back after a 20 s visibility timeout
    stack.settings_env.update(
        as_env(stub_rates("transient")) | SLOW_VENDOR
        | {"CREDITS_STUB_TRANSIENT_ATTEMPTS": "1", "CREDITS_STUB_LATENCY_MS": "2000",
           "CREDITS_TASK_TIME_LIMIT_S": "10", "CREDITS_VISIBILITY_TIMEOUT_S": "20",
           "CREDITS_RESTORE_INTERVAL_S": "1"}
    )  # fmt: skip
    gate = stack.gate_broker()
    tree = funded_member(db, account_credits=50, member_credits=50)
    worker = started_vendor_call(stack, db, tree, "retry-1")

    # when the broker goes away at the moment the task publishes its retry: the next new
    # connection to it is the pool child's, opening to publish the retry
    tripped = gate.cut_on_next_connect(4.0, drop_all=outage == "every_connection_cut")
    assert tripped.wait(30), "the worker never tried to publish a retry"

    # then the message comes back: the vendor is asked again and the job completes, once
    wait_until(lambda: status_of(db, tree.member_id, "retry-1") == "completed", 90,
               "the job to complete after the outage", 0.2)  # fmt: skip
    assert job_row(db, tree.member_id, "retry-1").attempts >= 2
    log = worker.log_path.read_bytes()
    if outage == "new_connections_refused":
        # the consumer's connection lived: the task requeued the message through it
        assert b"cannot publish its retry" in log
    else:
        # the consumer lost its connection and stopped the task (Celery's
        # worker_cancel_long_running_tasks_on_connection_loss); the broker kept the
        # unacked message (RabbitMQ requeues it at once, Redis after the visibility timeout)
        assert b"Connection to broker lost" in log
    wait_until(stack.broker_idle, 60, "the broker to hold no message")
    assert_charged_once(stack, db, tree, "retry-1", status="completed")
    assert b"Traceback" not in worker.log_path.read_bytes()


# ---------------------------------------------------------------- the resolver waits


@on_both_brokers
def test_a_worker_stopped_mid_call_for_less_than_the_redelivery_window_is_not_refunded(stack, db):
    # given a worker in the middle of a vendor call, and sweeps on a worker of their own
    stack.settings_env.update(FAST_RECOVERY | as_env(ALL_DELIVERED) | SLOW_VENDOR)
    tree = funded_member(db, account_credits=50, member_credits=50)
    stack.start_worker("sweeper", concurrency=1, queues=SWEEPS_ONLY)
    stack.start_beat()
    worker = started_vendor_call(stack, db, tree, "paused-1")

    # when the worker is stopped for longer than the in-doubt threshold and its job lock,
    # but less than the broker's redelivery delay
    worker.pause()
    stub = stack.stub()
    assert stub.status(vendor_key(tree.member_id, "paused-1")) == "unknown"
    runs = resolve_runs(stack)
    time.sleep(12)
    # then the resolver, which ran meanwhile, left it alone: nobody knows yet what happened
    assert resolve_runs(stack) >= runs + 6
    assert status_of(db, tree.member_id, "paused-1") == "submitted"
    assert hold_state(db, "paused-1") == "held"

    # and when the worker resumes, its call completes the job, charged once
    worker.resume()
    wait_until(lambda: status_of(db, tree.member_id, "paused-1") == "completed", 60,
               "the resumed call to complete the job", 0.2)  # fmt: skip
    assert_charged_once(stack, db, tree, "paused-1", status="completed")


@on_both_brokers
def test_the_resolver_acts_only_past_the_redelivery_window_and_says_why_it_voided(stack, db):
    # given a worker stopped in the middle of a vendor call, and a resolver that re-sends
    # a job unknown to the vendor once, then voids it
    stack.settings_env.update(
        FAST_RECOVERY | as_env(ALL_DELIVERED) | SLOW_VENDOR | {"CREDITS_MAX_RESENDS": "1"}
    )
    tree = funded_member(db, account_credits=50, member_credits=50)
    stack.start_worker("sweeper", concurrency=1, queues=SWEEPS_ONLY)
    stack.start_beat()
    worker = started_vendor_call(stack, db, tree, "lost-1")
    worker.pause()

    # when the resolver's wait for the job is 4 s from its end
    window_ends = move_next_attempt(stack, db, past_window_s=-4.0)

    # then nothing happens before it ends
    wait_until(lambda: time.time() > window_ends - 0.5, 10, "the end of the window")
    row = job_row(db, tree.member_id, "lost-1")
    assert (row.status, row.republished) == ("submitted", 0)
    # and after it, the job is re-sent (nobody takes it: the only flow worker is stopped),
    # then voided at the vendor and refunded, saying so
    wait_until(lambda: status_of(db, tree.member_id, "lost-1") == "refunded", 60,
               "the resolver to void the job", 0.2)  # fmt: skip
    row = job_row(db, tree.member_id, "lost-1")
    assert row.republished == 1
    assert re.fullmatch(
        r"no answer from the vendor within 8s \(re-sent 1 times\); voided by the resolver",
        row.last_error,
    ), row.last_error
    with db.unit_of_work() as session:
        refunded_at = session.scalar(
            select(JobTransition.at).where(JobTransition.job_pk == row.id,
                                           JobTransition.to_status == "refunded")
        )  # fmt: skip
    assert refunded_at.timestamp() >= window_ends

    # and when the stopped worker wakes up, its late call is refused by the vendor (the
    # void fenced the key): nothing is sent, nothing charged, one final event
    worker.resume()
    key = vendor_key(tree.member_id, "lost-1")
    wait_until(lambda: stack.stub().attempts(key) == 1, 30, "the late call to reach the vendor")
    wait_until(stack.broker_idle, 60, "the re-sent message to run")
    assert_charged_once(stack, db, tree, "lost-1", status="refunded")


# ---------------------------------------------------------------- the producer's contract


@on_both_brokers
@pytest.mark.parametrize("unreachable", ["refused", "black_hole"])
def test_send_action_raises_broker_unavailable_within_its_bound(stack, db, unreachable):
    # given a broker that refuses connections, or accepts them and never answers
    gate = stack.gate_broker()
    if unreachable == "refused":
        gate.cut()
    else:
        gate.black_hole()
    client = stack.client(publish_timeout_s=2.0)
    tree = funded_member(db, account_credits=50, member_credits=50)

    # when a job is sent
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="send it again with the same job_id"):
        client.send_action(note("unsent-1", tree.member_id))
    elapsed_s = time.monotonic() - started

    # then it was tried for the whole bound, and given up soon after it (an attempt under
    # way ends first: the 5 s socket timeout, in the worst case)
    assert 2.0 <= elapsed_s < 2.0 + 5.0 + 3.0, elapsed_s
    assert job_counts(db) == Counter()


@on_both_brokers
def test_send_action_rides_out_an_outage_shorter_than_its_bound(stack, db):
    stack.settings_env.update(as_env(ALL_DELIVERED))
    gate = stack.gate_broker()
    tree = funded_member(db, account_credits=50, member_credits=50)
    client = stack.client(publish_timeout_s=10.0)
    # given a broker down for 1.5 s
    gate.cut()
    threading.Timer(1.5, gate.restore).start()
    # when a job is sent meanwhile
    started = time.monotonic()
    client.send_action(note("ridden-1", tree.member_id))
    # then send_action waited for the broker and returned; the job is processed
    assert 1.4 <= time.monotonic() - started < 10.0
    stack.start_worker("w1")
    wait_until(lambda: job_counts(db)["completed"] == 1, 60, "the job to complete")
    assert_charged_once(stack, db, tree, "ridden-1", status="completed")


# ---------------------------------------------------------------- sweeps and time limits


@on_both_brokers
def test_a_sweep_that_meets_a_database_outage_retries_and_does_its_work(stack, db):
    # given a job recorded a minute ago whose message is gone, and no beat: only the one
    # sweep run the test sends can re-send it
    stack.settings_env.update(FAST_RECOVERY | as_env(ALL_DELIVERED))
    tree = funded_member(db, account_credits=50, member_credits=50)
    recorded_job(db, note("stale-1", tree.member_id), age_s=60)
    worker = stack.start_worker("w1")
    database = db.engine.url.database

    # when PostgreSQL refuses the database's connections (and drops those it had) while
    # the sweep runs
    with closing(pg_admin()) as admin:
        admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        try:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s", (database,))  # fmt: skip
            stack.broker_app().send_task("credits.republish_stale", queue=MAINTENANCE_QUEUE)
            wait_until(
                lambda: b"task credits.republish_stale: OperationalError, retrying in"
                in worker.log_path.read_bytes(), 30, "the sweep to fail and retry",
            )  # fmt: skip
        finally:
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
    db.engine.dispose()  # the test's own connections were dropped too

    # then a retry of that sweep re-sends the job, and the job completes
    wait_until(lambda: job_counts(db)["completed"] == 1, 60, "the re-sent job to complete")
    assert job_row(db, tree.member_id, "stale-1").republished == 1
    runs = int(stack.redis().get(f"{stack.key_prefix}sweep_runs:credits.republish_stale"))
    assert runs >= 2
    assert_charged_once(stack, db, tree, "stale-1", status="completed")


@on_both_brokers
def test_a_soft_time_limit_is_a_warning_and_the_resolver_settles_the_job(stack, db):
    # given a vendor slower than the soft time limit (0.8 x 5 s): the stub would sleep 4.5 s
    slow = {"CREDITS_TASK_TIME_LIMIT_S": "5", "CREDITS_VENDOR_TIMEOUT_S": "4.5",
            "CREDITS_JOB_LOCK_TIMEOUT_S": "5", "CREDITS_IN_DOUBT_AFTER_S": "6"}  # fmt: skip
    stack.settings_env.update(FAST_RECOVERY | as_env(ALL_DELIVERED) | slow)
    tree = funded_member(db, account_credits=50, member_credits=50)
    stack.start_beat()
    worker = started_vendor_call(stack, db, tree, "slow-1", CREDITS_STUB_LATENCY_MS="10000")

    # when the task hits its soft time limit
    wait_until(lambda: b"hit its soft time limit" in worker.log_path.read_bytes(), 30,
               "the soft time limit")  # fmt: skip

    # then that is one warning, no traceback, and the job stays in doubt, its hold kept
    log = worker.log_path.read_text()
    assert re.search(r"WARNING.*task credits\.send_action\[.*\] hit its soft time limit; "
                     r"left for the resolver", log), log  # fmt: skip
    assert "Traceback" not in log
    assert status_of(db, tree.member_id, "slow-1") == "submitted"
    assert hold_state(db, "slow-1") == "held"

    # and once the vendor answers again and the resolver's wait is over, the resolver
    # finds the vendor never got it and sends it again: delivered, charged once
    worker.stop()
    stack.start_worker("w2")
    move_next_attempt(stack, db, past_window_s=1.0)
    wait_until(lambda: status_of(db, tree.member_id, "slow-1") == "completed", 60,
               "the resolver to settle the job", 0.2)  # fmt: skip
    assert job_row(db, tree.member_id, "slow-1").republished == 1
    assert_charged_once(stack, db, tree, "slow-1", status="completed")


# ---------------------------------------------------------------- the stub is a vendor apart


def test_the_stub_vendor_remembers_what_it_sent_when_the_broker_loses_its_data(stack, db, tmp_path):
    # given the broker (and locks and events) on a Redis of its own, the stub on another
    proc, port = private_redis(tmp_path)
    try:
        stack.settings_env["CREDITS_STUB_REDIS_URL"] = stack.redis_url
        stack.redis_url = f"redis://127.0.0.1:{port}/0"
        stack.settings_env.update(FAST_RECOVERY | as_env(ALL_DELIVERED))
        tree = funded_member(db, account_credits=50, member_credits=50)
        # and a worker that dies after each vendor call, before capturing
        crash = {
            "CREDITS_FAULT_CRASH_AT": "after_vendor_accepted",
            "CREDITS_FAULT_CRASH_EVERY": "1",
            "CREDITS_FAULT_ARMED": FAULT_ARMING_PHRASE,
        }
        client = stack.client()
        job_ids = [f"sent-{i}" for i in range(3)]
        for job_id in job_ids:
            client.send_action(note(job_id, tree.member_id))
        worker = stack.start_worker("w1", **crash)
        stub = stack.stub()
        keys = [vendor_key(tree.member_id, job_id) for job_id in job_ids]
        wait_until(lambda: all(stub.sends(k) == 1 for k in keys), 60, "the vendor to send all")
        worker.kill()

        # when the broker's Redis loses everything: queues, unacked messages, events
        stack.redis().flushall()

        # then the vendor still knows what it sent, and the resolver, asking it, captures
        # each job without sending it again
        assert [stub.sends(k) for k in keys] == [1, 1, 1]
        stack.start_worker("w2")
        stack.start_beat()
        move_next_attempt(stack, db, past_window_s=1.0)
        wait_until(lambda: job_counts(db)["completed"] == 3, 60, "the resolver to capture")
        with db.unit_of_work() as session:
            assert set(session.scalars(select(Job.republished))) == {0}
        assert [stub.sends(k) for k in keys] == [1, 1, 1]
        assert balances.balance(db, "member", tree.member_id).available == 50 - 3 * NOTE_COST
        report = reconcile(db)
        assert report.ok, report.problems
        wait_until(lambda: len(stack.final_events()) == 3, 30, "the three outcome events")
        assert set(stack.final_events().values()) == {1}
    finally:
        stack.stop()
        proc.kill()
        proc.wait(10)
