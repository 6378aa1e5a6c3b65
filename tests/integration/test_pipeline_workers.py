"""The send pipeline end to end: real Redis, real PostgreSQL, real `celery -A worker worker`."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from kombu import Connection, Exchange, Producer
from sqlalchemy import func, select

from shared.client import QUEUES, CreditsClient
from shared.db import Database
from shared.events import EventStream
from shared.models import DeadLetter, Hold, Job
from shared.redis_client import make_redis
from shared.services import balances
from shared.services.reconcile import reconcile
from tests.factories import funded_member
from tests.integration.harness import wait_until
from worker.fulfilment import StubProvider, StubRates

ADDRESS = {"name": "Jane Roe", "line1": "1 Main St", "city": "Springfield", "country": "US"}
ABROAD = {"name": "Ann Smith", "line1": "2 High St", "city": "Leeds", "country": "United Kingdom"}
MIX_RATES = {
    "CREDITS_STUB_DELIVERED_RATE": "0.70",
    "CREDITS_STUB_TRANSIENT_RATE": "0.15",
    "CREDITS_STUB_REJECTED_RATE": "0.10",
    "CREDITS_STUB_TIMEOUT_RATE": "0.05",
}
ALL_DELIVERED = {
    "CREDITS_STUB_DELIVERED_RATE": "1",
    "CREDITS_STUB_TRANSIENT_RATE": "0",
    "CREDITS_STUB_REJECTED_RATE": "0",
    "CREDITS_STUB_TIMEOUT_RATE": "0",
}


def make_job(rng: random.Random, job_id: str, member_id: int) -> dict:
    action = rng.choice(
        ["handwritten_note", "postcard", "postcard", "gift_card", "email", "task", "accept_lead"]
    )
    job = {
        "job_id": job_id,
        "member_id": member_id,
        "action": action,
        "flow_id": "flow-1",
        "step_id": f"step-{rng.randint(1, 5)}",
        "source": rng.choice(["flow", "instant"]),
    }
    address = rng.choice([ADDRESS, ABROAD])
    if action == "handwritten_note":
        job |= {"message": "Thanks for your time!", "recipient": address, "return_address": ADDRESS}
    elif action == "postcard":
        job |= {"message": "Hello from us", "recipient": address}
    elif action == "gift_card":
        job |= {
            "brand": "Acme Coffee",
            "denomination": rng.choice([5, 10, 25, 50]),
            "recipient": address,
            "return_address": ADDRESS,
        }
    elif action == "email":
        job |= {"to": "jane@example.com", "subject": "Hi", "body": "Hello"}
    elif action == "task":
        job |= {"title": "Call Jane"}
    else:
        job |= {"lead_id": f"lead-{job_id}"}
    return job  # fmt: skip


def job_counts(db: Database) -> Counter:
    with db.unit_of_work() as session:
        rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    return Counter({status: n for status, n in rows})


def test_a_thousand_mixed_jobs_all_end_in_a_known_state_and_the_books_balance(stack, db):
    # given 10 members with plenty of credits and a stub at 70/15/10/5
    stack.settings_env.update(MIX_RATES)
    members = [funded_member(db, account_credits=5000, member_credits=4000, name=f"M{i}")
               for i in range(10)]  # fmt: skip
    settings = stack.settings()
    client = CreditsClient(settings=settings)
    rng = random.Random(7)
    jobs_sent = [make_job(rng, f"mix-{i}", rng.choice(members).member_id) for i in range(1000)]
    stack.start_worker("w1", concurrency=2)

    # when all of them are sent
    for job in jobs_sent:
        client.send_action(job)

    # then every job settles: final, or submitted only where the vendor timed out
    stub = StubProvider(make_redis(stack.redis_url), StubRates.from_settings(settings),
                        prefix=settings.key_prefix)  # fmt: skip
    expected_in_doubt = {
        j["job_id"] for j in jobs_sent if stub.planned_outcome(j["job_id"]) == "timeout"
    }

    def settled() -> bool:
        counts = job_counts(db)
        done = counts["completed"] + counts["refunded"] + counts["rejected"]
        return (
            sum(counts.values()) == 1000
            and done + counts["submitted"] == 1000
            and (counts["submitted"] == len(expected_in_doubt))
        )

    wait_until(settled, 300, "1000 jobs to settle", every_s=0.5)
    with db.unit_of_work() as session:
        rows = {j.job_id: j for j in session.scalars(select(Job))}
        holds = {h.job_id: h for h in session.scalars(select(Hold))}
    in_doubt = {jid for jid, j in rows.items() if j.status == "submitted"}
    assert in_doubt == expected_in_doubt
    delivered_cost = sum(j.cost for j in rows.values() if j.status == "completed")
    report = reconcile(db)
    assert report.ok, report.problems
    assert report.figures["spent"] == delivered_cost
    for jid, job in rows.items():
        hold = holds.get(jid)
        if job.status == "refunded" and job.cost:
            assert hold.state == "released"
        if job.status == "completed" and job.cost:
            assert hold.state == "captured"
            assert stub.sends(jid) == 1
        if job.status == "submitted" and job.cost:
            assert hold.state == "held"
    # and the stream carries exactly one final event per finished job
    events = list(EventStream(make_redis(stack.redis_url), settings.stream).all())
    finals = Counter(e["job_id"] for e in events if e["final"] == "1")
    assert set(finals) == set(rows) - in_doubt
    assert set(finals.values()) == {1}
    sample = next(e for e in events if e["status"] == "completed")
    assert {"job_id", "flow_id", "step_id", "status", "cost", "available"} <= set(sample)


def test_the_same_job_sent_twice_and_redelivered_is_charged_once(stack, db):
    stack.settings_env.update(ALL_DELIVERED)
    tree = funded_member(db, account_credits=100, member_credits=50)
    settings = stack.settings()
    client = CreditsClient(settings=settings)
    note = {"job_id": "dup-1", "member_id": tree.member_id, "action": "handwritten_note",
            "message": "Hi", "recipient": ADDRESS, "return_address": ADDRESS}  # fmt: skip
    # given the same job sent twice, and the very same message published twice
    client.send_action(note)
    client.send_action(note)
    with Connection(stack.redis_url) as conn:
        producer = Producer(conn)
        message = client._app.amqp.create_task_message(
            "fixed-task-id", "credits.send_action", (), {"job": {**note, "job_id": "dup-2"}}
        )
        for _ in range(2):
            producer.publish(
                message.body, routing_key="credits.flow", exchange=Exchange("credits.flow"),
                headers=message.headers, serializer="json", declare=list(QUEUES),
            )  # fmt: skip
    stack.start_worker("w1")

    def done() -> bool:
        return job_counts(db)["completed"] == 2

    wait_until(done, 60, "both jobs to complete")
    # let any straggling duplicate run to the end before checking the books
    wait_until(lambda: _queue_empty(stack), 30, "queues to drain")
    assert balances.balance(db, "member", tree.member_id).available == 40
    assert reconcile(db).figures["spent"] == 10
    events = list(EventStream(make_redis(stack.redis_url), settings.stream).all())
    finals = Counter(e["job_id"] for e in events if e["final"] == "1")
    assert finals == Counter({"dup-1": 1, "dup-2": 1})


def _queue_empty(stack) -> bool:
    redis = make_redis(stack.redis_url)
    return (
        redis.llen("credits.flow") == 0
        and redis.llen("credits.instant") == 0
        and (redis.hlen("unacked") == 0)
    )


def test_fifty_notes_against_twelve_credits_with_two_workers_complete_exactly_two(stack, db):
    stack.settings_env.update(ALL_DELIVERED)
    tree = funded_member(db, account_credits=12, member_credits=12)
    client = CreditsClient(settings=stack.settings())
    stack.start_worker("w1", concurrency=1)
    stack.start_worker("w2", concurrency=1)
    for i in range(50):
        client.send_action({"job_id": f"note-{i}", "member_id": tree.member_id,
                            "action": "handwritten_note", "message": "Hi",
                            "recipient": ADDRESS, "return_address": ADDRESS})  # fmt: skip

    def settled() -> bool:
        counts = job_counts(db)
        return counts["completed"] + counts["awaiting_credits"] == 50

    wait_until(settled, 120, "50 notes to settle")
    counts = job_counts(db)
    assert counts["completed"] == 2 and counts["awaiting_credits"] == 48
    wallet = balances.balance(db, "member", tree.member_id)
    assert (wallet.available, wallet.held) == (2, 0)
    assert reconcile(db).ok


def test_bad_messages_are_dead_lettered_and_the_worker_keeps_running(stack, db):
    stack.settings_env.update(ALL_DELIVERED)
    tree = funded_member(db, account_credits=20, member_credits=10)
    settings = stack.settings()
    client = CreditsClient(settings=settings)
    good = {"job_id": "good-1", "member_id": tree.member_id, "action": "postcard",
            "message": "Hi", "recipient": ADDRESS}  # fmt: skip
    client.send_action(good)
    worker = stack.start_worker("w1")
    wait_until(lambda: job_counts(db)["completed"] == 1, 60, "the first good job")

    # when garbage of every kind arrives
    with Connection(stack.redis_url) as conn:
        producer = Producer(conn)
        # Declaring the queues binds them, so a raw publish cannot be dropped unrouted.
        raw = dict(routing_key="credits.flow", exchange=Exchange("credits.flow"),
                   declare=list(QUEUES))  # fmt: skip
        producer.publish(b"\xff\x00 not json {", content_type="application/json",
                         content_encoding="binary", **raw)  # fmt: skip
        producer.publish(b"\x80\x04K\x01.", content_type="application/x-python-serialize",
                         content_encoding="binary", **raw)  # fmt: skip
        bad_jobs = [
            {"job_id": "bad-action", "member_id": tree.member_id, "action": "fax"},
            {"job_id": "bad-types", "member_id": "seven", "action": "task", "title": 5},
            {"job_id": "no-member", "member_id": 999999, "action": "task", "title": "x"},
            {**good, "message": "different content"},  # same job_id, other content
            "a plain string",
        ]
        for body in bad_jobs:
            message = client._app.amqp.create_task_message(
                f"id-{bad_jobs.index(body)}", "credits.send_action", (), {"job": body}
            )
            producer.publish(message.body, headers=message.headers, serializer="json", **raw)
        unknown = client._app.amqp.create_task_message("id-x", "credits.no_such_task", (), {})
        producer.publish(unknown.body, headers=unknown.headers, serializer="json", **raw)
    client.send_action({**good, "job_id": "good-2"})

    # then each is recorded with its reason, nobody is charged, and the worker lives on
    wait_until(lambda: job_counts(db)["completed"] == 2, 60, "the second good job")

    def dead_letters() -> list[str]:
        with db.unit_of_work() as session:
            return [d.reason for d in session.scalars(select(DeadLetter))]

    # Two pool processes: the good job may finish before the last bad one is recorded.
    reasons = wait_until(lambda: len(dead_letters()) >= 8 and dead_letters(), 60, "8 letters")
    joined = "\n".join(reasons)
    assert len(reasons) == 8, joined
    for needle in ("undecodable", "unknown action 'fax'", "member_id", "member 999999",
                   "different content", "JSON object, got str", "unknown task"):  # fmt: skip
        assert needle in joined, f"{needle!r} not in dead letters:\n{joined}"
    assert worker.alive
    assert balances.balance(db, "member", tree.member_id).available == 8
    assert reconcile(db).ok


def test_invalid_job_is_refused_by_the_producer_before_publishing(stack):
    from shared.errors import InvalidRequest

    client = CreditsClient(settings=stack.settings())
    with pytest.raises(InvalidRequest, match=r"recipient\.country"):
        atlantis = {**ADDRESS, "country": "Atlantis"}
        client.send_action({"job_id": "x", "member_id": 1, "action": "postcard",
                            "message": "Hi", "recipient": atlantis})  # fmt: skip
    assert make_redis(stack.redis_url).llen("credits.flow") == 0


def test_instant_jobs_jump_ahead_of_queued_flow_steps(stack, db):
    stack.settings_env.update(ALL_DELIVERED)
    tree = funded_member(db, account_credits=100, member_credits=100)
    client = CreditsClient(settings=stack.settings())
    for i in range(30):
        client.send_action({"job_id": f"flow-{i}", "member_id": tree.member_id,
                            "action": "task", "title": "t"})  # fmt: skip
    client.send_action({"job_id": "instant-1", "member_id": tree.member_id, "action": "task",
                        "title": "now", "source": "instant"})  # fmt: skip
    stack.start_worker("w1", concurrency=1)
    wait_until(lambda: job_counts(db)["completed"] == 31, 60, "all 31 tasks")
    with db.unit_of_work() as session:
        order = list(session.scalars(select(Job.job_id).order_by(Job.id)))
    assert order.index("instant-1") < 3  # served first (the worker may have prefetched one)
