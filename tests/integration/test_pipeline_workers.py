"""The send pipeline end to end: real Redis, real PostgreSQL, real `celery -A worker worker`,
with each broker where delivery matters (Redis, and a RabbitMQ vhost of the test's own)."""

from __future__ import annotations

import base64
import json
from collections import Counter

import pytest
from sqlalchemy import select

from shared.client import SEND_ACTION_TASK
from shared.errors import InvalidRequest
from shared.models import DeadLetter, Hold, Job, Member
from shared.queues import FLOW_QUEUE, INSTANT_QUEUE, MAINTENANCE_QUEUE
from shared.services import balances
from shared.services.dead_letters import dead_letters
from shared.services.reconcile import reconcile
from shared.services.recovery import vendor_key
from tests.factories import (
    ADDRESS,
    ALL_DELIVERED,
    MIX_RATES,
    as_env,
    funded_member,
    funded_members,
    job_counts,
    message,
    mixed_jobs,
    note,
    postcard,
)
from tests.helpers import wait_until
from tests.integration.harness import on_both_brokers

FINAL = ("completed", "refunded", "rejected")


def dead_letter_reasons(db) -> list[str]:
    return [letter["reason"] for letter in dead_letters(db)]


def mixed_jobs_end_in_a_known_state(stack, db, n: int, *, members: int, **worker) -> None:
    """n mixed jobs over a few members, a stub at 70/15/10/5, one worker as given: every job
    ends final, or submitted only where the vendor timed out, and the books balance."""
    stack.settings_env.update(as_env(MIX_RATES))
    jobs_sent = mixed_jobs(funded_members(db, members, credits=4000), n, seed=7, prefix="mix")
    client = stack.client()
    stub = stack.stub()
    expected_in_doubt = {
        (j["member_id"], j["job_id"])
        for j in jobs_sent
        if stub.planned_outcome(vendor_key(j["member_id"], j["job_id"])) == "timeout"
    }
    stack.start_worker("w1", **worker)

    # when all of them are sent
    for job in jobs_sent:
        client.send_action(job)

    # then every job settles: final, or submitted only where the vendor timed out
    def settled() -> bool:
        counts = job_counts(db)
        done = sum(counts[s] for s in FINAL)
        return done + counts["submitted"] == n and counts["submitted"] == len(expected_in_doubt)

    wait_until(settled, 300, f"{n} jobs to settle", every_s=0.5)
    with db.unit_of_work() as session:
        rows = {(j.member_id, j.job_id): j for j in session.scalars(select(Job))}
        holds = {
            (h.member_id, h.job_id): h
            for h in session.execute(
                select(Hold.job_id, Hold.state, Member.id.label("member_id")).join(
                    Member, Member.wallet_id == Hold.wallet_id
                )
            )
        }
    in_doubt = {key for key, j in rows.items() if j.status == "submitted"}
    assert in_doubt == expected_in_doubt
    delivered_cost = sum(j.cost for j in rows.values() if j.status == "completed")
    report = reconcile(db)
    assert report.ok, report.problems
    assert report.figures["spent"] == delivered_cost
    for key, job in rows.items():
        expected_hold = {"refunded": "released", "completed": "captured", "submitted": "held"}
        if job.cost and job.status in expected_hold:
            assert holds[key].state == expected_hold[job.status], key
        if job.status == "completed":
            assert stub.sends(vendor_key(*key)) == 1, key
    # and the stream carries exactly one final event per finished job, none for in-doubt ones
    finals = stack.final_events()
    assert set(finals) == set(rows) - in_doubt
    assert set(finals.values()) == {1}
    sample = next(e for e in stack.events() if e["status"] == "completed")
    assert {"job_id", "member_id", "flow_id", "step_id", "status", "cost", "available"} <= set(
        sample
    )


@on_both_brokers
def test_a_thousand_mixed_jobs_all_end_in_a_known_state_and_the_books_balance(stack, db):
    mixed_jobs_end_in_a_known_state(stack, db, 1000, members=10, concurrency=2)


def test_the_thread_pool_recommended_for_slow_vendors_keeps_the_books(stack, db):
    # `-P threads -c 32` (the README's command for real vendors): 32 tasks at once in one
    # process share its engine, Redis pool and locks; 4 members make them contend.
    stack.settings_env["CREDITS_STUB_LATENCY_MS"] = "40"
    mixed_jobs_end_in_a_known_state(stack, db, 400, members=4, pool="threads", concurrency=32)


@on_both_brokers
def test_the_same_job_sent_twice_and_redelivered_is_charged_once(stack, db):
    stack.settings_env.update(as_env(ALL_DELIVERED))
    tree = funded_member(db, account_credits=100, member_credits=50)
    client = stack.client()
    # given the same job sent twice, and the very same signed message published twice
    client.send_action(note("dup-1", tree.member_id))
    client.send_action(note("dup-1", tree.member_id))
    producer = stack.broker_app()
    for _ in range(2):
        producer.send_task(SEND_ACTION_TASK, kwargs=message(note("dup-2", tree.member_id)),
                           task_id="fixed-task-id", queue=FLOW_QUEUE)  # fmt: skip

    # when a worker runs them all
    stack.start_worker("w1")

    # then each job completes and is charged once, and told once
    wait_until(lambda: job_counts(db)["completed"] == 2, 60, "both jobs to complete")
    # let any straggling duplicate run to the end before checking the books
    wait_until(stack.broker_idle, 30, "queues to drain")
    assert balances.balance(db, "member", tree.member_id).available == 40
    assert reconcile(db).figures["spent"] == 10
    assert stack.final_events() == Counter({(tree.member_id, "dup-1"): 1,
                                           (tree.member_id, "dup-2"): 1})  # fmt: skip
    stub = stack.stub()
    assert [stub.sends(vendor_key(tree.member_id, j)) for j in ("dup-1", "dup-2")] == [1, 1]


@pytest.mark.parametrize(
    ("broker", "pool", "concurrency"),
    [("redis", "prefork", 1), ("amqp", "prefork", 1), ("redis", "threads", 32)],
    ids=["redis", "amqp", "redis-threads"], indirect=["broker"],
)  # fmt: skip
def test_fifty_notes_against_twelve_credits_with_two_workers_complete_exactly_two(
    stack, db, pool, concurrency
):
    stack.settings_env.update(as_env(ALL_DELIVERED))
    tree = funded_member(db, account_credits=12, member_credits=12)
    client = stack.client()
    stack.start_worker("w1", concurrency=concurrency, pool=pool)
    stack.start_worker("w2", concurrency=concurrency, pool=pool)
    for i in range(50):
        client.send_action(note(f"note-{i}", tree.member_id))

    def settled() -> bool:
        counts = job_counts(db)
        return counts["completed"] + counts["awaiting_credits"] == 50

    wait_until(settled, 120, "50 notes to settle")
    counts = job_counts(db)
    assert counts["completed"] == 2 and counts["awaiting_credits"] == 48
    wallet = balances.balance(db, "member", tree.member_id)
    assert (wallet.available, wallet.held) == (2, 0)
    assert reconcile(db).ok


@on_both_brokers
def test_bad_messages_are_dead_lettered_and_the_worker_keeps_running(stack, db):
    stack.settings_env.update(as_env(ALL_DELIVERED))
    tree = funded_member(db, account_credits=20, member_credits=10)
    client = stack.client()
    good = postcard("good-1", tree.member_id)
    client.send_action(good)
    worker = stack.start_worker("w1")
    wait_until(lambda: job_counts(db)["completed"] == 1, 60, "the first good job")

    # when garbage of every kind arrives, each signed where a signature could be given, so
    # that it gets past the signature check to the step that must refuse it
    stack.publish_raw(b"\xff\x00 not json {", content_type="application/json")
    stack.publish_raw(b"\x80\x04K\x01.", content_type="application/x-python-serialize")
    bad_jobs = [
        {"job_id": "bad-action", "member_id": tree.member_id, "action": "fax"},
        {"job_id": "bad-types", "member_id": "seven", "action": "task", "title": 5},
        {"job_id": "no-member", "member_id": 999999, "action": "task", "title": "x"},
        {**good, "message": "different content"},  # same job_id, other content
        "a plain string",
    ]
    producer = stack.broker_app()
    for body in bad_jobs:
        producer.send_task(SEND_ACTION_TASK, kwargs=message(body), queue=FLOW_QUEUE)
    extra = {**message(postcard("extra-kwarg", tree.member_id)), "priority": "high"}
    producer.send_task(SEND_ACTION_TASK, kwargs=extra, queue=FLOW_QUEUE)
    producer.send_task(SEND_ACTION_TASK, args=(postcard("positional", tree.member_id),),
                       queue=FLOW_QUEUE)  # fmt: skip
    producer.send_task("credits.no_such_task", queue=FLOW_QUEUE)
    client.send_action(postcard("good-2", tree.member_id))

    # then each is recorded with its reason, nobody is charged, and the worker lives on
    wait_until(lambda: job_counts(db)["completed"] == 2, 60, "the second good job")
    # Two pool processes: the good job may finish before the last bad one is recorded.
    reasons = wait_until(
        lambda: len(dead_letter_reasons(db)) >= 10 and dead_letter_reasons(db), 60, "10 letters"
    )
    joined = "\n".join(reasons)
    assert len(reasons) == 10, joined
    for needle in ("undecodable", "unknown action 'fax'", "member_id", "member 999999",
                   "different content", "JSON object, got str", "unexpected arguments",
                   "positional argument", "unknown task"):  # fmt: skip
        assert needle in joined, f"{needle!r} not in dead letters:\n{joined}"
    assert worker.alive
    assert balances.balance(db, "member", tree.member_id).available == 8
    assert reconcile(db).ok


def envelope(body: str, **overrides: object) -> bytes:
    """A queue entry shaped like kombu's Redis envelope, with ``overrides`` applied."""
    entry = {
        "body": body, "content-encoding": "utf-8", "content-type": "application/json",
        "headers": {}, "properties": {
            "body_encoding": "base64", "delivery_tag": "raw-1", "priority": 0,
            "delivery_info": {"exchange": FLOW_QUEUE, "routing_key": FLOW_QUEUE},
        },
    }  # fmt: skip
    return json.dumps({**entry, **overrides}).encode()


def test_raw_queue_entries_that_are_no_message_are_kept_and_the_worker_goes_on(stack, db):
    stack.settings_env.update(as_env(ALL_DELIVERED))
    tree = funded_member(db, account_credits=20, member_credits=10)
    worker = stack.start_worker("w1")
    # when entries no Celery client would write are pushed onto the queue itself
    entries = {
        "not JSON": b"\xff\x00 not json {",
        "a JSON list": b"[1, 2, 3]",
        "bad base64": envelope("!!! not base64 !!!"),
        "no properties": envelope(base64.b64encode(b"{}").decode(), properties=None),
        "unknown content type": envelope(base64.b64encode(b"x").decode(),
                                         **{"content-type": "application/x-made-up"}),
    }  # fmt: skip
    redis = stack.broker_redis()
    for entry in entries.values():
        redis.lpush(stack.queue_key(FLOW_QUEUE), entry)
    stack.client().send_action(postcard("after-garbage", tree.member_id))

    # then the worker keeps running and serves the next job
    wait_until(lambda: job_counts(db)["completed"] == 1, 60, "the job after the garbage")
    assert worker.alive
    # and every entry is a dead letter, its bytes kept as they came; nobody was charged
    letters = wait_until(lambda: len(raw_dead_letters(db)) >= 5 and raw_dead_letters(db), 30,
                         "5 letters")  # fmt: skip
    assert len(letters) == 5, letters
    assert {raw for raw, _queue, _reason in letters} >= {entries["not JSON"],
                                                         entries["a JSON list"]}  # fmt: skip
    assert {queue for _raw, queue, _reason in letters} == {FLOW_QUEUE}
    assert all(reason.startswith("undecodable") for _raw, _queue, reason in letters), letters
    assert balances.balance(db, "member", tree.member_id).available == 9
    assert reconcile(db).ok


def raw_dead_letters(db) -> list[tuple[bytes, str, str]]:
    """Each dead letter's bytes as received, its queue and its reason, oldest first."""
    with db.unit_of_work() as session:
        rows = session.execute(
            select(DeadLetter.raw, DeadLetter.queue, DeadLetter.reason).order_by(DeadLetter.id)
        )
        return [(bytes(raw), queue, reason) for raw, queue, reason in rows]


@on_both_brokers
def test_invalid_job_is_refused_by_the_producer_before_publishing(stack):
    client = stack.client()
    atlantis = {**ADDRESS, "country": "Atlantis"}
    with pytest.raises(InvalidRequest, match=r"recipient\.country"):
        client.send_action(postcard("x", 1, recipient=atlantis))
    assert stack.queued(FLOW_QUEUE) == 0


@on_both_brokers
def test_instant_jobs_jump_ahead_of_queued_flow_steps(stack, db):
    stack.settings_env.update(as_env(ALL_DELIVERED))
    tree = funded_member(db, account_credits=100, member_credits=100)
    client = stack.client()
    task = {"member_id": tree.member_id, "action": "task", "title": "t"}
    for i in range(30):
        client.send_action({**task, "job_id": f"flow-{i}"})
    client.send_action({**task, "job_id": "instant-1", "source": "instant"})
    if stack.broker_is_amqp:
        # RabbitMQ keeps no order between queues: instant work has workers of its own, as
        # in compose, beside those that take everything.
        stack.start_worker("instant", concurrency=1, queues=f"{MAINTENANCE_QUEUE},{INSTANT_QUEUE}")
    stack.start_worker("w1", concurrency=1)
    wait_until(lambda: job_counts(db)["completed"] == 31, 60, "all 31 tasks")
    with db.unit_of_work() as session:
        order = list(session.scalars(select(Job.job_id).order_by(Job.id)))
    assert order.index("instant-1") < 3  # served first (the worker may have prefetched one)
