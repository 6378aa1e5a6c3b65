"""A real Celery worker in a thread, on the in-process ``memory://`` broker, against SQLite
and fakeredis: jobs go in through the producer client and come out as ledger rows, job
states and events. Outcomes are awaited by polling with a deadline, never by sleeping.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest
from celery.signals import task_postrun
from kombu import Connection, Producer
from sqlalchemy import select

from shared.client import FLOW_QUEUE, INSTANT_QUEUE, QUEUES, CreditsClient
from shared.config import Settings
from shared.db import Database
from shared.errors import InvalidRequest
from shared.models import DeadLetter, Wallet
from shared.services import balances, jobs
from shared.services.reconcile import reconcile
from tests.factories import ADDRESS, email, funded_member, note, postcard
from worker.app import create_app
from worker.fulfilment import StubProvider
from worker.resources import resources_for

DEADLINE_S = 30.0  # how long to wait for the worker before failing; never reached when green
EXPECTED = {  # the stub's planned outcome -> where the job must end
    "delivered": "completed",
    "rejected": "refunded",
    "transient": "completed",  # after one Celery retry
    "timeout": "submitted",  # in doubt, hold kept, for the resolver
}

T = TypeVar("T")
pytestmark = pytest.mark.usefixtures("clean_environment")


# ---------------------------------------------------------------- fixtures and helpers


def queue_length(settings: Settings, name: str) -> int:
    with Connection(settings.broker) as conn:
        return conn.default_channel.queue_declare(queue=name, passive=True).message_count


def wait_until(probe: Callable[[], T], what: str) -> T:
    """Poll ``probe`` until it returns something truthy; fail after DEADLINE_S."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def job_ids_planned(provider: StubProvider, outcome: str, n: int, prefix: str) -> list[str]:
    """The first ``n`` job ids the seeded stub has destined for ``outcome``."""
    found: list[str] = []
    i = 0
    while len(found) < n:
        candidate = f"{prefix}-{i}"
        if provider.planned_outcome(candidate) == outcome:
            found.append(candidate)
        i += 1
    return found


def outcome_events(client: CreditsClient) -> dict[str, list[dict[str, str]]]:
    by_job: dict[str, list[dict[str, str]]] = {}
    for event in client.events.all():
        by_job.setdefault(event["job_id"], []).append(event)
    return by_job


def spent(db: Database) -> int:
    with db.unit_of_work() as session:
        return session.scalar(select(Wallet.available).where(Wallet.system_name == "spent"))


def dead_letter_rows(db: Database) -> list[DeadLetter]:
    with db.unit_of_work() as session:
        return list(session.scalars(select(DeadLetter).order_by(DeadLetter.id)))


# ---------------------------------------------------------------- routing (no worker)


def test_instant_jobs_go_to_the_instant_queue_and_flow_jobs_to_the_flow_queue(db, settings, client):
    member = funded_member(db, member_credits=10).member_id
    client.send_action(note("i-1", member, source="instant"))
    client.send_action(email("i-2", member, source="instant"))
    for i in range(3):
        client.send_action(postcard(f"f-{i}", member))
    assert queue_length(settings, INSTANT_QUEUE) == 2
    assert queue_length(settings, FLOW_QUEUE) == 3


def test_the_client_refuses_an_invalid_job_and_publishes_nothing(settings, client):
    with pytest.raises(InvalidRequest, match=r"recipient\.country"):
        client.send_action(postcard("bad", 1, recipient={**ADDRESS, "country": "Narnia"}))
    assert queue_length(settings, INSTANT_QUEUE) == 0
    assert queue_length(settings, FLOW_QUEUE) == 0


# ---------------------------------------------------------------- a worker running jobs


def test_a_worker_takes_thirty_mixed_jobs_each_to_its_expected_state(db, settings, client, worker):
    rich = funded_member(db, account_credits=500, member_credits=300).member_id
    poor = funded_member(db, account_credits=10, member_credits=2, name="Poor").member_id
    provider = resources_for(settings).provider
    expected: dict[str, str] = {}
    payloads: list[dict] = []
    for outcome, n in (("delivered", 14), ("rejected", 5), ("transient", 5), ("timeout", 2)):
        for k, job_id in enumerate(job_ids_planned(provider, outcome, n, "mix")):
            build = (note, postcard, email)[k % 3]
            source = "instant" if k % 4 == 0 else "flow"
            payloads.append(build(job_id, rich, flow_id="flow-1", source=source))
            expected[job_id] = EXPECTED[outcome]
    for job_id in job_ids_planned(provider, "delivered", 3, "short"):
        payloads.append(note(job_id, poor))
        expected[job_id] = "awaiting_credits"
    gift = {
        "job_id": "gift-odd",
        "member_id": rich,
        "action": "gift_card",
        "brand": "Amazon",
        "denomination": 7,
        "recipient": ADDRESS,
        "return_address": ADDRESS,
    }
    payloads.append(gift)
    expected["gift-odd"] = "rejected"
    assert len(payloads) == 30
    assert "transient" in {provider.planned_outcome(p["job_id"]) for p in payloads}

    for payload in payloads:
        client.send_action(payload)

    def every_job_reported() -> dict[str, list[dict[str, str]]] | None:
        events = outcome_events(client)
        return events if set(expected) <= set(events) else None

    events = wait_until(every_job_reported, "an outcome event for every job")
    states = {job_id: jobs.get_view(db, job_id).status for job_id in expected}
    assert states == expected
    for job_id, status in expected.items():
        assert [e["status"] for e in events[job_id]] == [status]

    transient = [
        p["job_id"] for p in payloads if provider.planned_outcome(p["job_id"]) == "transient"
    ]
    for job_id in transient:
        report = jobs.job_report(db, job_id)
        assert report.job.attempts == 2
        assert provider.sends(job_id) == 1
    completed_cost = sum(
        jobs.get_view(db, job_id).cost for job_id, s in expected.items() if s == "completed"
    )
    in_doubt_cost = sum(
        jobs.get_view(db, job_id).cost for job_id, s in expected.items() if s == "submitted"
    )
    assert spent(db) == completed_cost
    assert balances.balance(db, "member", rich).held == in_doubt_cost
    assert balances.balance(db, "member", poor).available == 2
    assert reconcile(db).ok


@pytest.fixture
def finished_runs() -> Iterator[Counter[str]]:
    """job_id -> how many runs of the send task returned (not counting retries)."""
    runs: Counter[str] = Counter()

    def count(sender=None, kwargs=None, state=None, **_: object) -> None:
        job = (kwargs or {}).get("job")
        if state == "SUCCESS" and isinstance(job, dict):
            runs[str(job.get("job_id"))] += 1

    task_postrun.connect(count, weak=False)
    yield runs
    task_postrun.disconnect(count)


def test_a_job_sent_twice_is_charged_and_sent_once(db, settings, client, worker, finished_runs):
    member = funded_member(db, member_credits=20).member_id
    provider = resources_for(settings).provider
    (job_id,) = job_ids_planned(provider, "delivered", 1, "twice")
    client.send_action(note(job_id, member))
    client.send_action(note(job_id, member))
    wait_until(lambda: finished_runs[job_id] == 2, "both deliveries to finish")
    assert jobs.get_view(db, job_id).status == "completed"
    assert balances.balance(db, "member", member).available == 20 - 5
    assert spent(db) == 5
    assert provider.sends(job_id) == 1
    assert [e["status"] for e in outcome_events(client)[job_id]] == ["completed"]
    assert reconcile(db).ok


def test_a_raw_non_json_message_is_dead_lettered_and_the_worker_carries_on(
    db, settings, client, worker
):
    member = funded_member(db, member_credits=20).member_id
    provider = resources_for(settings).provider
    (job_id,) = job_ids_planned(provider, "delivered", 1, "after-bad")
    with Connection(settings.broker) as conn:
        flow = next(q for q in QUEUES if q.name == FLOW_QUEUE)
        Producer(conn.default_channel).publish(
            b"this is {not json",
            exchange=flow.exchange,
            routing_key=flow.routing_key,
            content_type="application/json",
            content_encoding="utf-8",
            declare=[flow],
        )
    client.send_action(note(job_id, member))

    letters = wait_until(lambda: dead_letter_rows(db), "the bad message's dead letter")
    wait_until(lambda: outcome_events(client).get(job_id), "the next valid job's outcome")
    (letter,) = letters
    assert letter.reason.startswith("undecodable message body")
    assert letter.body == "this is {not json"
    assert jobs.get_view(db, job_id).status == "completed"
    assert balances.balance(db, "member", member).available == 15
    assert reconcile(db).ok


def test_an_invalid_job_reaching_the_worker_is_dead_lettered_with_its_reason(
    db, settings, client, worker
):
    member = funded_member(db, member_credits=20).member_id
    # Bypass the client's validation, as a producer on another version might.
    app = create_app(settings)
    app.send_task(
        "credits.send_action",
        kwargs={"job": {"job_id": "odd-1", "member_id": member, "action": "fax"}},
        queue=FLOW_QUEUE,
    )
    letters = wait_until(lambda: dead_letter_rows(db), "the dead letter")
    (letter,) = letters
    assert "action: unknown action 'fax'" in letter.reason
    assert letter.job_id == "odd-1"
    assert letter.message_id
    event = wait_until(lambda: outcome_events(client).get("odd-1"), "the rejected event")
    assert [e["status"] for e in event] == ["rejected"]
    assert balances.balance(db, "member", member).available == 20
