"""A real Celery worker in a thread, on the in-process ``memory://`` broker, against SQLite
and fakeredis: jobs go in through the producer client and come out as ledger rows, job
states and events. Outcomes are awaited by polling with a deadline, never by sleeping.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
from celery.signals import task_postrun
from kombu import Connection, Producer
from sqlalchemy import select

from shared.client import CreditsClient
from shared.db import Database
from shared.errors import InvalidRequest, NotFound
from shared.models import DeadLetter
from shared.queues import FLOW_QUEUE, INSTANT_QUEUE, queues
from shared.services import balances, job_reports
from shared.services.reconcile import reconcile
from shared.services.recovery import vendor_key
from tests.factories import (
    ADDRESS,
    email,
    funded_member,
    gift_card,
    message,
    note,
    postcard,
    spent,
)
from tests.helpers import queue_length, wait_until
from worker.factory import create_app
from worker.fulfilment.stub import StubProvider
from worker.resources import resources_for

DEADLINE_S = 30.0  # how long to wait for the worker before failing; never reached when green
EXPECTED = {  # the stub's planned outcome -> where the job must end
    "delivered": "completed",
    "rejected": "refunded",
    "transient": "completed",  # after one Celery retry
    "timeout": "submitted",  # in doubt, hold kept, for the resolver
}

pytestmark = pytest.mark.usefixtures("clean_environment")


# ---------------------------------------------------------------- fixtures and helpers


def job_ids_planned(
    provider: StubProvider, member_id: int, outcome: str, n: int, prefix: str
) -> list[str]:
    """The first ``n`` job ids of this member the seeded stub has destined for ``outcome``."""
    found: list[str] = []
    i = 0
    while len(found) < n:
        candidate = f"{prefix}-{i}"
        if provider.planned_outcome(vendor_key(member_id, candidate)) == outcome:
            found.append(candidate)
        i += 1
    return found


def outcome_events(client: CreditsClient) -> dict[str, list[dict[str, str]]]:
    by_job: dict[str, list[dict[str, str]]] = {}
    for event in client.events.all():
        by_job.setdefault(event["job_id"], []).append(event)
    return by_job


def dead_letter_rows(db: Database) -> list[DeadLetter]:
    with db.unit_of_work() as session:
        return list(session.scalars(select(DeadLetter).order_by(DeadLetter.id)))


def status(db: Database, member_id: int, job_id: str) -> str | None:
    """The job's status, or None while no worker has recorded it yet."""
    try:
        return job_reports.get_view(db, member_id, job_id).status
    except NotFound:
        return None


# ---------------------------------------------------------------- routing (no worker)


def test_instant_jobs_go_to_the_instant_queue_and_flow_jobs_to_the_flow_queue(db, settings, client):
    member = funded_member(db, member_credits=10).member_id
    client.send_action(note("i-1", member, source="instant"))
    client.send_action(email("i-2", member, source="instant"))
    for i in range(3):
        client.send_action(postcard(f"f-{i}", member))
    assert queue_length(settings.broker, INSTANT_QUEUE) == 2
    assert queue_length(settings.broker, FLOW_QUEUE) == 3


def test_the_client_refuses_an_invalid_job_and_publishes_nothing(settings, client):
    with pytest.raises(InvalidRequest, match=r"recipient\.country"):
        client.send_action(postcard("bad", 1, recipient={**ADDRESS, "country": "Narnia"}))
    assert queue_length(settings.broker, INSTANT_QUEUE) == 0
    assert queue_length(settings.broker, FLOW_QUEUE) == 0


# ---------------------------------------------------------------- a worker running jobs


def test_a_worker_takes_thirty_mixed_jobs_each_to_its_expected_state(db, settings, client, worker):
    rich = funded_member(db, account_credits=500, member_credits=300).member_id
    poor = funded_member(db, account_credits=10, member_credits=2, name="Poor").member_id
    provider = resources_for(settings).provider
    expected: dict[tuple[int, str], str] = {}
    planned: dict[tuple[int, str], str] = {}
    payloads: list[dict] = []
    for outcome, n in (("delivered", 14), ("rejected", 5), ("transient", 5), ("timeout", 2)):
        for k, job_id in enumerate(job_ids_planned(provider, rich, outcome, n, "mix")):
            build = (note, postcard, email)[k % 3]
            source = "instant" if k % 4 == 0 else "flow"
            payloads.append(build(job_id, rich, flow_id="flow-1", source=source))
            expected[rich, job_id] = EXPECTED[outcome]
            planned[rich, job_id] = outcome
    for job_id in job_ids_planned(provider, poor, "delivered", 3, "short"):
        payloads.append(note(job_id, poor))
        expected[poor, job_id] = "awaiting_credits"
    payloads.append(gift_card("gift-odd", rich, denomination=7))
    expected[rich, "gift-odd"] = "rejected"
    assert len(payloads) == 30

    for payload in payloads:
        client.send_action(payload)

    told = {job_id for (_, job_id), final in expected.items() if final != "submitted"}

    def every_job_settled() -> dict[str, list[dict[str, str]]] | None:
        # in-doubt jobs (submitted) publish nothing until the resolver settles them
        events = outcome_events(client)
        done = told <= set(events) and all(
            status(db, *key) == final for key, final in expected.items()
        )
        return events if done else None

    events = wait_until(every_job_settled, DEADLINE_S, "every job to reach its state")
    assert set(events) == told
    for (_member, job_id), final in expected.items():
        if final != "submitted":
            assert [e["status"] for e in events[job_id]] == [final]

    for key in (k for k, outcome in planned.items() if outcome == "transient"):
        assert job_reports.job_report(db, key[1], member_id=key[0]).job.attempts == 2
        assert provider.sends(vendor_key(*key)) == 1

    def cost(wanted: str) -> int:
        return sum(job_reports.get_view(db, *key).cost for key, s in expected.items()
                   if s == wanted)  # fmt: skip

    assert spent(db) == cost("completed")
    assert balances.balance(db, "member", rich).held == cost("submitted")
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
    (job_id,) = job_ids_planned(provider, member, "delivered", 1, "twice")
    client.send_action(note(job_id, member))
    client.send_action(note(job_id, member))
    wait_until(lambda: finished_runs[job_id] == 2, DEADLINE_S, "both deliveries to finish")
    assert status(db, member, job_id) == "completed"
    assert balances.balance(db, "member", member).available == 20 - 5
    assert spent(db) == 5
    assert provider.sends(vendor_key(member, job_id)) == 1
    assert [e["status"] for e in outcome_events(client)[job_id]] == ["completed"]
    assert reconcile(db).ok


def test_a_raw_non_json_message_is_dead_lettered_and_the_worker_carries_on(
    db, settings, client, worker
):
    member = funded_member(db, member_credits=20).member_id
    provider = resources_for(settings).provider
    (job_id,) = job_ids_planned(provider, member, "delivered", 1, "after-bad")
    (flow,) = [q for q in queues(settings) if q.name == FLOW_QUEUE]
    with Connection(settings.broker) as conn:
        Producer(conn.default_channel).publish(
            b"this is {not json",
            exchange=flow.exchange,
            routing_key=flow.routing_key,
            content_type="application/json",
            content_encoding="utf-8",
            declare=[flow],
        )
    client.send_action(note(job_id, member))

    letters = wait_until(lambda: dead_letter_rows(db), DEADLINE_S, "the bad message's dead letter")
    wait_until(lambda: outcome_events(client).get(job_id), DEADLINE_S, "the next job's outcome")
    (letter,) = letters
    assert letter.reason.startswith("undecodable message body")
    assert letter.body == "this is {not json"
    assert status(db, member, job_id) == "completed"
    assert balances.balance(db, "member", member).available == 15
    assert reconcile(db).ok


def test_an_invalid_job_reaching_the_worker_is_dead_lettered_with_its_reason(
    db, settings, client, worker
):
    member = funded_member(db, member_credits=20).member_id
    # Signed, but not validated: a producer on another version might send this.
    app = create_app(settings)
    odd = {"job_id": "odd-1", "member_id": member, "action": "fax"}
    app.send_task("credits.send_action", kwargs=message(odd), queue=FLOW_QUEUE)
    (letter,) = wait_until(lambda: dead_letter_rows(db), DEADLINE_S, "the dead letter")
    assert "action: unknown action 'fax'" in letter.reason
    assert letter.job_id == "odd-1"
    assert letter.message_id
    assert letter.queue == FLOW_QUEUE
    event = wait_until(lambda: outcome_events(client).get("odd-1"), DEADLINE_S, "the event")
    assert [e["status"] for e in event] == ["rejected"]
    assert balances.balance(db, "member", member).available == 20


def test_an_unsigned_job_reaching_the_worker_charges_nobody_and_tells_nobody(
    db, settings, client, worker, finished_runs
):
    member = funded_member(db, member_credits=20).member_id
    # Someone with the broker's password but no signing key publishes a gift card.
    app = create_app(settings)
    app.send_task("credits.send_action", kwargs={"job": gift_card("g-1", member)},
                  queue=FLOW_QUEUE)  # fmt: skip
    (letter,) = wait_until(lambda: dead_letter_rows(db), DEADLINE_S, "the dead letter")
    assert letter.reason == "unsigned job: no signature was sent with it"
    wait_until(lambda: finished_runs["g-1"] == 1, DEADLINE_S, "the task to return")
    assert balances.balance(db, "member", member).available == 20
    assert outcome_events(client) == {}
    assert job_reports.list_jobs(db, job_reports.JobFilter())["jobs"] == []
