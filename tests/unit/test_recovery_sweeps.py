"""Recovery sweeps on SQLite and fakeredis, driven directly (no worker): the resolver asks
the vendor and settles, re-sends or voids; parked jobs resume or expire; a poison job is
given up, not re-sent for ever. Re-sent jobs land, signed, on the in-process broker."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import timedelta

import pytest
from kombu import Connection
from sqlalchemy import select, update

from shared.config import Settings
from shared.errors import PermanentVendorError, VendorOutcomeUnknown
from shared.models import Hold, Job, utcnow
from shared.queues import FLOW_QUEUE, queues
from shared.schemas import parse_job
from shared.services import balances, job_reports, ledger, recovery
from shared.services.reconcile import reconcile
from shared.services.recovery import vendor_key
from shared.signing import verify
from tests.factories import ALL_DELIVERED, accepted_job, funded_member, note
from tests.helpers import queue_length
from worker import recovery as sweeps
from worker.fulfilment import VendorStatus
from worker.resources import Resources

pytestmark = pytest.mark.usefixtures("clean_environment")

LONG_AGO = timedelta(days=1)  # older than every sweep's threshold, retries' ones included


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The unit settings with a vendor that delivers everything, unless a test says."""
    return settings.model_copy(update={**ALL_DELIVERED, "max_resends": 2})


def age(res: Resources) -> None:
    """Every job idle for a day, and any retry it had due a day ago."""
    with res.db.unit_of_work() as session:
        session.execute(
            update(Job).values(updated_at=utcnow() - LONG_AGO, next_attempt_at=utcnow() - LONG_AGO)
        )
        session.commit()


def wallet(res: Resources, member_id: int) -> tuple[int, int]:
    found = balances.balance(res.db, "member", member_id)
    return found.available, found.held


def sent_jobs(res: Resources) -> list[dict]:
    """The jobs the sweeps re-sent, taken off the flow queue, each checked for its signature."""
    (flow,) = [q for q in queues(res.settings) if q.name == FLOW_QUEUE]
    found = []
    with Connection(res.settings.broker) as conn:
        while (message := flow(conn.default_channel).get(no_ack=True)) is not None:
            _args, kwargs, _embed = message.decode()
            verify(kwargs["job"], kwargs["auth"], res.settings.verify_keys())
            found.append(kwargs["job"])
    return found


def in_doubt(res: Resources, credits: int = 20) -> tuple[int, str]:
    """A submitted note whose worker is gone: (member, its vendor key)."""
    member = funded_member(res.db, account_credits=100, member_credits=credits).member_id
    assert accepted_job(res.db, note("j-1", member)).status == "submitted"
    age(res)
    return member, vendor_key(member, "j-1")


def events(res: Resources) -> list[tuple[str, str]]:
    return [(e["job_id"], e["status"]) for e in res.events.all()]


# ---------------------------------------------------------------- the resolver


def test_a_job_the_vendor_delivered_is_completed_and_its_hold_captured(resources):
    member, key = in_doubt(resources)
    resources.provider.submit(parse_job(note("j-1", member)), idempotency_key=key)
    report = sweeps.resolve_in_doubt(resources)
    assert report.counts == {"completed": 1}
    assert job_reports.job_report(resources.db, "j-1").hold["state"] == "captured"
    assert wallet(resources, member) == (15, 0)
    assert events(resources) == [("j-1", "completed")]
    assert reconcile(resources.db).ok


def test_a_job_the_vendor_never_got_is_resent_then_voided_and_refunded(resources):
    # given a note whose message died before the vendor saw it (max_resends is 2)
    member, key = in_doubt(resources)
    # when the resolver runs, twice, with the job idle again in between
    for round_ in (1, 2):
        assert sweeps.resolve_in_doubt(resources).counts == {"resent": 1}, round_
        age(resources)
    # then each run re-sent the same signed job, and the job still holds its credits
    assert [j["job_id"] for j in sent_jobs(resources)] == ["j-1", "j-1"]
    assert wallet(resources, member) == (15, 5)
    # when it runs a third time, the vendor still knowing nothing of it
    assert sweeps.resolve_in_doubt(resources).counts == {"refunded": 1}
    # then the vendor key is fenced, the job refunded, and the flow engine told why
    found = job_reports.job_report(resources.db, "j-1")
    in_doubt_s = resources.settings.in_doubt_after_s
    assert found.job.detail == (
        f"no answer from the vendor within {in_doubt_s:g}s (re-sent 2 times); "
        "voided by the resolver"
    )
    assert wallet(resources, member) == (20, 0)
    assert events(resources) == [("j-1", "refunded")]
    assert resources.provider.status(key) == VendorStatus.FAILED
    with pytest.raises(PermanentVendorError, match="voided"):  # a late delivery never sends
        resources.provider.submit(parse_job(note("j-1", member)), idempotency_key=key)
    assert resources.provider.sends(key) == 0
    assert reconcile(resources.db).ok


def test_a_job_still_pending_at_the_vendor_keeps_its_hold_longer(resources):
    member, key = in_doubt(resources)
    slow = replace(resources.provider.rates, **{"delivered": 0.0, "timeout": 1.0})
    resources.provider.rates = slow  # the vendor took it, and has not said how it went
    with pytest.raises(VendorOutcomeUnknown):
        resources.provider.submit(parse_job(note("j-1", member)), idempotency_key=key)
    with resources.db.unit_of_work() as session:
        before = session.scalar(select(Hold.expires_at))
    assert sweeps.resolve_in_doubt(resources).counts == {"pending": 1}
    with resources.db.unit_of_work() as session:
        assert session.scalar(select(Hold.expires_at)) > before
    assert job_reports.job_report(resources.db, "j-1").job.status == "submitted"
    assert wallet(resources, member) == (15, 5)


def test_an_unreachable_vendor_never_settles_a_job(resources):
    member, _key = in_doubt(resources)
    resources.provider.set_outage(True)
    assert sweeps.resolve_in_doubt(resources).counts == {"unreachable": 1}
    assert job_reports.job_report(resources.db, "j-1").job.status == "submitted"
    assert wallet(resources, member) == (15, 5)
    assert sent_jobs(resources) == []


def test_a_job_a_worker_is_running_is_left_to_it(resources):
    # given an in-doubt job that a worker has just picked up again (it holds the lease)
    in_doubt(resources)
    with resources.db.unit_of_work() as session:
        running = utcnow() + timedelta(seconds=60)
        session.execute(update(Job).values(next_attempt_at=running))
        session.commit()
    # then the resolver does not claim it
    assert sweeps.resolve_in_doubt(resources).counts == {}
    assert job_reports.job_report(resources.db, "j-1").job.status == "submitted"


def test_the_resolver_takes_the_lease_of_a_job_it_asks_the_vendor_about(resources):
    # given an in-doubt job the vendor is still working on
    member, key = in_doubt(resources)
    resources.provider.submit(parse_job(note("j-1", member)), idempotency_key=key)
    resources.provider.redis.hset(f"{resources.settings.key_prefix}stub:send:{key}",
                                  "pending_until", f"{time.time() + 60:.3f}")  # fmt: skip
    # when the resolver asks (pending: the hold is kept)
    assert sweeps.resolve_in_doubt(resources).counts == {"pending": 1}
    # then a late delivery of the job waits for the resolver's lease
    with resources.db.unit_of_work() as session:
        lease = session.scalar(select(Job.next_attempt_at))
    assert lease > utcnow()


def test_a_job_whose_retry_is_still_due_is_not_touched(resources):
    member = funded_member(resources.db, member_credits=20).member_id
    accepted_job(resources.db, note("j-1", member))
    with resources.db.unit_of_work() as session:  # idle for long, but its retry is coming
        session.execute(update(Job).values(updated_at=utcnow() - LONG_AGO))
        session.commit()
    assert sweeps.resolve_in_doubt(resources).counts == {}
    assert sent_jobs(resources) == []


# ---------------------------------------------------------------- parked jobs


def test_a_parked_job_resumes_once_its_member_can_pay(resources):
    tree = funded_member(resources.db, account_credits=100, workspace_credits=10)
    assert accepted_job(resources.db, note("j-1", tree.member_id)).status == "awaiting_credits"
    assert sweeps.resume_awaiting(resources, member_id=tree.member_id).counts == {"expired": 0}
    ledger.allocate(resources.db, "member", tree.member_id, amount=5)
    report = sweeps.resume_awaiting(resources, member_id=tree.member_id)
    assert report.counts == {"expired": 0, "resumed": 1}
    assert [j["job_id"] for j in sent_jobs(resources)] == ["j-1"]


def test_a_parked_job_past_its_wait_expires_and_its_flow_engine_hears(resources):
    member = funded_member(resources.db, account_credits=100).member_id
    accepted_job(resources.db, note("j-1", member))
    with resources.db.unit_of_work() as session:
        session.execute(update(Job).values(wait_expires_at=utcnow() - LONG_AGO))
        session.commit()
    assert sweeps.resume_awaiting(resources).counts == {"expired": 1}
    assert job_reports.job_report(resources.db, "j-1").job.status == "expired"
    assert events(resources) == [("j-1", "expired")]
    assert queue_length(resources.settings.broker, FLOW_QUEUE) == 0


# ---------------------------------------------------------------- stale jobs (old rows)


def stale(db, member_id: int, payload: dict, status: str) -> None:
    """A job left received or reserved: the two-step pipeline before 0005 could leave
    those behind (today one transaction takes a job straight to submitted)."""
    accepted_job(db, payload)
    with db.unit_of_work() as session:
        session.execute(
            update(Job).where(Job.member_id == member_id).values(status=status,
                                                                 updated_at=utcnow() - LONG_AGO)
        )  # fmt: skip
        session.commit()


def claim_stale(db, max_resends: int) -> recovery.StaleBatch:
    batch = recovery.claim_stale(db, older_than_s=60, max_resends=max_resends, limit=10,
                                 notify=None)  # fmt: skip
    with db.unit_of_work() as session:  # the claim's lease, run out
        session.execute(update(Job).values(updated_at=utcnow() - LONG_AGO))
        session.commit()
    return batch


def test_a_stale_job_is_resent_until_the_limit_then_given_up_with_its_hold_released(db):
    tree = funded_member(db, account_credits=10, member_credits=10)
    lead = {"job_id": "poison-1", "member_id": tree.member_id, "action": "accept_lead",
            "lead_id": "l"}  # fmt: skip
    stale(db, tree.member_id, lead, "reserved")
    assert balances.balance(db, "member", tree.member_id).held == 1
    for round_ in range(3):
        batch = claim_stale(db, max_resends=3)
        assert [c.job_id for c in batch.resend] == ["poison-1"], round_
    batch = claim_stale(db, max_resends=3)
    assert batch.resend == []
    assert [(v.job_id, v.status, v.final) for v in batch.given_up] == [
        ("poison-1", "refunded", True)
    ]
    assert "gave up after 3 re-sends" in batch.given_up[0].detail
    found = balances.balance(db, "member", tree.member_id)
    assert (found.available, found.held) == (10, 0)
    assert reconcile(db).ok


def test_a_received_job_that_is_given_up_ends_rejected_and_charges_nobody(db):
    tree = funded_member(db, account_credits=10, member_credits=10)
    task = {"job_id": "p2", "member_id": tree.member_id, "action": "task", "title": "t"}
    stale(db, tree.member_id, task, "received")
    assert [c.job_id for c in claim_stale(db, max_resends=1).resend] == ["p2"]
    batch = claim_stale(db, max_resends=1)
    assert [(v.job_id, v.status) for v in batch.given_up] == [("p2", "rejected")]
    assert balances.balance(db, "member", tree.member_id).available == 10
