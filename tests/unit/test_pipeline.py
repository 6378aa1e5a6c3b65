"""The send pipeline, driven directly: SQLite for the ledger, in-process fakeredis for the
locks, the event stream and the stub vendor. No Celery here; ``RetryLater`` and
``LockBusy`` are what the task's base class turns into retries.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from shared.config import load_settings
from shared.db import Database
from shared.errors import NotFound, PermanentVendorError
from shared.models import DeadLetter, Job, JobTransition, LedgerTransaction, utcnow
from shared.services import balances, job_reports, ledger
from shared.services.reconcile import reconcile
from shared.services.recovery import vendor_key
from tests.factories import (
    ADDRESS,
    SIGNING_KEY,
    email,
    funded_member,
    gift_card,
    message,
    note,
    spent,
    stub_rates,
)
from tests.helpers import race
from worker.pipeline import SendPipeline
from worker.resources import Resources
from worker.retry import LockBusy, RetryLater

NOTE_COST = 5  # the built-in catalog's price of a handwritten note

MakePipeline = Callable[..., SendPipeline]
pytestmark = pytest.mark.usefixtures("clean_environment")


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture
def make_pipeline(sqlite_url: str) -> Iterator[MakePipeline]:
    """Build a pipeline whose stub vendor gives every job ``outcome``; each one gets its own
    fakeredis server, so vendor state, locks and events never leak between pipelines."""
    made: list[Resources] = []

    def make(outcome: str = "delivered", **overrides: object) -> SendPipeline:
        settings = load_settings(
            database_url=sqlite_url,
            redis_url=f"memory://{uuid.uuid4().hex}",
            broker_url="memory://",
            stub_latency_ms=0,
            job_signing_key=SIGNING_KEY,
            **{**stub_rates(outcome), **overrides},
        )
        resources = Resources(settings)
        made.append(resources)
        return SendPipeline(resources)

    yield make
    for resources in made:
        resources.close()


def run(pipeline: SendPipeline, job: object, **where: str) -> dict:
    """Deliver one signed ``credits.send_action`` message to the pipeline."""
    return pipeline.process((), message(job), **where)


def member_with(db: Database, credits: int) -> int:
    return funded_member(db, account_credits=100, member_credits=credits).member_id


def events_of(pipeline: SendPipeline, job_id: str) -> list[dict[str, str]]:
    return [e for e in pipeline.res.events.all() if e.get("job_id") == job_id]


def sends(pipeline: SendPipeline, member: int, job_id: str) -> int:
    return pipeline.res.provider.sends(vendor_key(member, job_id))


def report(db: Database, job_id: str, member: int | None = None) -> job_reports.JobReport:
    return job_reports.job_report(db, job_id, member_id=member)


def txn_kinds(db: Database, job_id: str | None = None) -> list[str]:
    with db.unit_of_work() as session:
        query = select(LedgerTransaction.kind).order_by(LedgerTransaction.id)
        if job_id is not None:
            query = query.where(LedgerTransaction.job_id == job_id)
        return list(session.scalars(query))


def dead_letters(db: Database) -> list[DeadLetter]:
    with db.unit_of_work() as session:
        return list(session.scalars(select(DeadLetter).order_by(DeadLetter.id)))


def job_count(db: Database) -> int:
    with db.unit_of_work() as session:
        return session.scalar(select(func.count(Job.id)))


def stored_payload(db: Database, job_id: str) -> dict:
    with db.unit_of_work() as session:
        return session.scalar(select(Job.payload).where(Job.job_id == job_id))


def transitions(db: Database, job_id: str) -> list[str]:
    with db.unit_of_work() as session:
        return list(
            session.scalars(
                select(JobTransition.to_status)
                .join(Job, Job.id == JobTransition.job_pk)
                .where(Job.job_id == job_id)
                .order_by(JobTransition.id)
            )
        )


def retry_is_due(db: Database, job_id: str) -> None:
    """Time passes until the job's retry is due (its lease, ``next_attempt_at``, ends)."""
    with db.unit_of_work() as session:
        session.execute(update(Job).where(Job.job_id == job_id).values(next_attempt_at=None))
        session.commit()


def lease_of(db: Database, job_id: str):
    with db.unit_of_work() as session:
        return session.scalar(select(Job.next_attempt_at).where(Job.job_id == job_id))


def wallet(db: Database, member_id: int) -> tuple[int, int]:
    found = balances.balance(db, "member", member_id)
    return found.available, found.held


# ---------------------------------------------------------------- delivered


def test_a_delivered_note_completes_and_captures_its_hold(db, make_pipeline):
    member = member_with(db, 20)
    pipeline = make_pipeline("delivered")
    result = run(pipeline, note("j-1", member))
    assert result == {
        "job_id": "j-1",
        "member_id": member,
        "status": "completed",
        "cost": NOTE_COST,
    }
    found = report(db, "j-1")
    assert found.job.status == "completed"
    assert found.job.attempts == 1
    assert found.vendor_ref.startswith("PH-")
    assert found.hold["state"] == "captured"
    assert found.hold["amount"] == NOTE_COST
    assert spent(db) == NOTE_COST
    assert wallet(db, member) == (20 - NOTE_COST, 0)
    assert txn_kinds(db, "j-1") == ["hold", "capture"]
    assert transitions(db, "j-1") == ["received", "reserved", "submitted", "completed"]
    assert sends(pipeline, member, "j-1") == 1
    assert reconcile(db).ok


def test_a_completed_job_publishes_one_final_event_with_what_the_flow_engine_needs(
    db, make_pipeline
):
    member = member_with(db, 20)
    pipeline = make_pipeline("delivered")
    run(pipeline, note("j-1", member, flow_id="flow-9", step_id="step-3"))
    (event,) = events_of(pipeline, "j-1")
    assert event["status"] == "completed"
    assert event["final"] == "1"
    assert event["flow_id"] == "flow-9"
    assert event["step_id"] == "step-3"
    assert event["member_id"] == str(member)
    assert event["cost"] == str(NOTE_COST)
    assert event["available"] == str(20 - NOTE_COST)
    assert event["held"] == "0"


def test_the_price_is_stored_on_the_job_with_its_catalog_version(db, make_pipeline):
    member = member_with(db, 20)
    pipeline = make_pipeline("delivered")
    abroad = {**ADDRESS, "country": "Germany"}
    postcard = {"job_id": "p-1", "member_id": member, "action": "postcard", "message": "Hi"}
    run(pipeline, {**postcard, "recipient": abroad})
    view = report(db, "p-1").job
    assert view.cost == pipeline.res.catalog.postcard_international
    assert view.catalog_version == pipeline.res.catalog.version
    assert stored_payload(db, "p-1")["recipient"]["country"] == "DE"


# ---------------------------------------------------------------- rejected by the vendor


def test_a_rejected_note_is_refunded_and_the_balance_restored(db, make_pipeline):
    member = member_with(db, 20)
    pipeline = make_pipeline("rejected")
    result = run(pipeline, note("j-1", member))
    assert result["status"] == "refunded"
    found = report(db, "j-1")
    assert found.job.status == "refunded"
    assert "address undeliverable" in found.job.detail
    assert found.hold["state"] == "released"
    assert wallet(db, member) == (20, 0)
    assert spent(db) == 0
    assert txn_kinds(db, "j-1") == ["hold", "release"]
    (event,) = events_of(pipeline, "j-1")
    assert (event["status"], event["final"]) == ("refunded", "1")
    assert "address undeliverable" in event["reason"]
    assert event["available"] == "20"
    assert reconcile(db).ok


def test_a_refusal_longer_than_the_detail_column_is_refunded_with_its_reason_cut(
    db, make_pipeline, monkeypatch
):
    # given a vendor that explains its refusal at great length
    member = member_with(db, 20)
    pipeline = make_pipeline("delivered")
    reason = "print-house refused: " + "the address cannot be read; " * 60
    assert len(reason) > 1000

    def refuse(job, *, idempotency_key):
        raise PermanentVendorError(reason)

    monkeypatch.setattr(pipeline.res.provider, "submit", refuse)
    # when a note is sent
    result = run(pipeline, note("j-1", member))
    # then it is refunded, and what is recorded and told of the reason fits its column
    assert result["status"] == "refunded"
    found = report(db, "j-1")
    assert found.history[-1]["detail"] == reason[:1000]
    assert found.job.detail == reason[:1000]
    assert wallet(db, member) == (20, 0)
    (event,) = events_of(pipeline, "j-1")
    assert event["reason"] == reason[:1000]
    assert reconcile(db).ok


# ---------------------------------------------------------------- transient vendor errors


def test_a_transient_error_asks_for_a_retry_and_keeps_the_hold(db, make_pipeline):
    member = member_with(db, 20)
    pipeline = make_pipeline("transient", stub_transient_attempts=1)
    with pytest.raises(RetryLater) as caught:
        run(pipeline, note("j-1", member))
    assert caught.value.countdown_s > 0
    found = report(db, "j-1")
    assert found.job.status == "submitted"
    assert "HTTP 503" in found.job.detail
    assert found.hold["state"] == "held"
    assert wallet(db, member) == (20 - NOTE_COST, NOTE_COST)
    assert events_of(pipeline, "j-1") == []
    assert reconcile(db).ok


def test_a_retried_job_completes_on_the_next_delivery_and_is_sent_once(db, make_pipeline):
    member = member_with(db, 20)
    pipeline = make_pipeline("transient", stub_transient_attempts=1)
    with pytest.raises(RetryLater):
        run(pipeline, note("j-1", member))
    retry_is_due(db, "j-1")
    result = run(pipeline, note("j-1", member))
    assert result["status"] == "completed"
    found = report(db, "j-1")
    assert found.job.attempts == 2
    assert found.hold["state"] == "captured"
    assert sends(pipeline, member, "j-1") == 1
    assert wallet(db, member) == (20 - NOTE_COST, 0)
    assert txn_kinds(db, "j-1") == ["hold", "capture"]
    assert [e["status"] for e in events_of(pipeline, "j-1")] == ["completed"]


def test_retry_backoff_grows_with_attempts_up_to_the_ceiling(db, make_pipeline):
    member = member_with(db, 20)
    pipeline = make_pipeline(
        "transient",
        stub_transient_attempts=6,
        retry_backoff_base_s=1.0,
        retry_backoff_max_s=4.0,
    )
    countdowns = []
    for _ in range(5):
        with pytest.raises(RetryLater) as caught:
            run(pipeline, note("j-1", member))
        countdowns.append(caught.value.countdown_s)
        retry_is_due(db, "j-1")
    ceilings = [1.0, 2.0, 4.0, 4.0, 4.0]
    assert all(c / 2 <= d <= c for d, c in zip(countdowns, ceilings, strict=True)), countdowns


def test_when_retries_are_exhausted_the_job_stays_submitted_with_its_hold(db, make_pipeline):
    member = member_with(db, 20)
    pipeline = make_pipeline("transient", retry_max=0, stub_transient_attempts=5)
    result = run(pipeline, note("j-1", member))
    assert result["status"] == "submitted"
    found = report(db, "j-1")
    assert found.job.status == "submitted"
    assert found.job.detail.startswith("vendor still failing after 1 attempts")
    assert found.hold["state"] == "held"
    assert wallet(db, member) == (20 - NOTE_COST, NOTE_COST)
    assert sends(pipeline, member, "j-1") == 0
    assert events_of(pipeline, "j-1") == []  # not final: the resolver settles it later
    assert reconcile(db).ok


def test_vendor_attempts_count_across_deliveries_against_retry_max(db, make_pipeline):
    member = member_with(db, 20)
    pipeline = make_pipeline("transient", retry_max=2, stub_transient_attempts=10)
    for _ in range(2):
        with pytest.raises(RetryLater):
            run(pipeline, note("j-1", member))
        retry_is_due(db, "j-1")
    assert run(pipeline, note("j-1", member))["status"] == "submitted"
    assert report(db, "j-1").job.attempts == 3


# ---------------------------------------------------------------- timeouts


def test_a_vendor_timeout_leaves_the_job_submitted_with_its_hold_in_doubt(db, make_pipeline):
    member = member_with(db, 20)
    pipeline = make_pipeline("timeout")
    result = run(pipeline, note("j-1", member))
    assert result["status"] == "submitted"
    found = report(db, "j-1")
    assert found.job.status == "submitted"
    assert found.job.detail.startswith("in doubt")
    assert "did not answer" in found.job.detail
    assert found.hold["state"] == "held"
    assert wallet(db, member) == (20 - NOTE_COST, NOTE_COST)
    assert events_of(pipeline, "j-1") == []  # not final: the resolver settles it later
    assert reconcile(db).ok


# ---------------------------------------------------------------- insufficient credits


def test_a_member_short_of_credits_parks_the_job_without_a_hold(db, make_pipeline):
    member = member_with(db, 3)
    pipeline = make_pipeline("delivered")
    result = run(pipeline, note("j-1", member))
    assert result["status"] == "awaiting_credits"
    found = report(db, "j-1")
    assert found.job.status == "awaiting_credits"
    assert found.hold is None
    assert wallet(db, member) == (3, 0)
    assert txn_kinds(db, "j-1") == []
    assert sends(pipeline, member, "j-1") == 0
    (event,) = events_of(pipeline, "j-1")
    assert (event["status"], event["final"]) == ("awaiting_credits", "0")
    assert f"3 credits available, {NOTE_COST} needed" in event["reason"]
    assert event["cost"] == str(NOTE_COST)


def test_a_parked_job_completes_when_processed_again_after_credits_arrive(db, make_pipeline):
    tree = funded_member(db, account_credits=100, member_credits=3)
    pipeline = make_pipeline("delivered")
    run(pipeline, note("j-1", tree.member_id))
    ledger.allocate(db, "workspace", tree.workspace_id, amount=10)
    ledger.allocate(db, "member", tree.member_id, amount=10)
    assert run(pipeline, note("j-1", tree.member_id))["status"] == "completed"
    assert wallet(db, tree.member_id) == (13 - NOTE_COST, 0)
    assert transitions(db, "j-1") == [
        "received",
        "awaiting_credits",
        "reserved",
        "submitted",
        "completed",
    ]
    assert [e["status"] for e in events_of(pipeline, "j-1")] == ["awaiting_credits", "completed"]
    assert reconcile(db).ok


def test_a_parked_job_processed_again_while_still_short_stays_parked(db, make_pipeline):
    member = member_with(db, 3)
    pipeline = make_pipeline("delivered")
    run(pipeline, note("j-1", member))
    assert run(pipeline, note("j-1", member))["status"] == "awaiting_credits"
    assert transitions(db, "j-1") == ["received", "awaiting_credits"]
    assert len(events_of(pipeline, "j-1")) == 1


# ---------------------------------------------------------------- free actions


def test_a_free_email_completes_with_cost_zero_and_no_ledger_entries(db, make_pipeline):
    member = member_with(db, 0)
    pipeline = make_pipeline("delivered")
    before = txn_kinds(db)
    result = run(pipeline, email("e-1", member))
    assert result == {"job_id": "e-1", "member_id": member, "status": "completed", "cost": 0}
    found = report(db, "e-1")
    assert found.hold is None
    assert found.vendor_ref.startswith("CH-")
    assert txn_kinds(db) == before
    assert spent(db) == 0
    (event,) = events_of(pipeline, "e-1")
    assert (event["status"], event["cost"]) == ("completed", "0")


def test_a_free_action_the_vendor_rejects_is_refunded_without_ledger_entries(db, make_pipeline):
    member = member_with(db, 0)
    pipeline = make_pipeline("rejected")
    assert run(pipeline, email("e-1", member))["status"] == "refunded"
    assert txn_kinds(db, "e-1") == []
    assert reconcile(db).ok


# ---------------------------------------------------------------- redelivery and conflicts


def test_processing_a_finished_job_again_changes_nothing(db, make_pipeline):
    member = member_with(db, 20)
    pipeline = make_pipeline("delivered")
    first = run(pipeline, note("j-1", member))
    history = transitions(db, "j-1")
    again = run(pipeline, note("j-1", member))
    assert again == first
    assert transitions(db, "j-1") == history
    assert txn_kinds(db, "j-1") == ["hold", "capture"]
    assert spent(db) == NOTE_COST
    assert wallet(db, member) == (20 - NOTE_COST, 0)
    assert sends(pipeline, member, "j-1") == 1
    assert len(events_of(pipeline, "j-1")) == 1


def test_the_same_job_id_with_other_content_is_dead_lettered_and_charges_nobody(db, make_pipeline):
    member = member_with(db, 20)
    pipeline = make_pipeline("delivered")
    run(pipeline, note("j-1", member))
    result = run(pipeline, note("j-1", member, message="A different note"))
    assert result["status"] == "dead_letter"
    assert "already received with different content" in result["reason"]
    (letter,) = dead_letters(db)
    assert (letter.job_id, letter.member_id) == ("j-1", member)
    assert "different content" in letter.reason
    assert "A different note" in letter.body
    assert report(db, "j-1").job.status == "completed"
    assert stored_payload(db, "j-1")["message"] == "Thanks for the call!"
    assert wallet(db, member) == (20 - NOTE_COST, 0)
    assert spent(db) == NOTE_COST
    assert [e["status"] for e in events_of(pipeline, "j-1")] == ["completed"]


def test_one_job_id_from_two_members_is_two_jobs_each_charged_once(db, make_pipeline):
    member = member_with(db, 20)
    other = member_with(db, 20)
    pipeline = make_pipeline("delivered")
    first = run(pipeline, note("flow-9:step-2:lead-7", member))
    second = run(pipeline, note("flow-9:step-2:lead-7", other, message="Another note"))
    assert (first["status"], second["status"]) == ("completed", "completed")
    assert wallet(db, member) == (20 - NOTE_COST, 0)
    assert wallet(db, other) == (20 - NOTE_COST, 0)
    assert sends(pipeline, member, "flow-9:step-2:lead-7") == 1
    assert sends(pipeline, other, "flow-9:step-2:lead-7") == 1
    events = events_of(pipeline, "flow-9:step-2:lead-7")
    assert sorted(e["member_id"] for e in events) == sorted([str(member), str(other)])
    assert dead_letters(db) == []
    assert reconcile(db).ok


def test_a_conflicting_job_before_the_original_finished_leaves_the_original_alone(
    db, make_pipeline
):
    member = member_with(db, 20)
    pipeline = make_pipeline("timeout")
    run(pipeline, note("j-1", member))
    assert run(pipeline, note("j-1", member, message="Other"))["status"] == "dead_letter"
    found = report(db, "j-1")
    assert found.job.status == "submitted"
    assert found.hold["state"] == "held"
    assert found.job.attempts == 1


def test_an_unknown_member_is_dead_lettered_and_the_producer_hears_rejected(db, make_pipeline):
    pipeline = make_pipeline("delivered")
    result = run(pipeline, note("j-1", 424242))
    assert result["status"] == "dead_letter"
    (letter,) = dead_letters(db)
    assert letter.job_id == "j-1"
    assert letter.reason == "member 424242 does not exist"
    assert letter.member_id == 424242
    assert letter.task_name == "credits.send_action"
    with pytest.raises(NotFound):
        report(db, "j-1")
    (event,) = events_of(pipeline, "j-1")
    assert (event["status"], event["final"]) == ("rejected", "1")
    assert "member 424242 does not exist" in event["reason"]
    assert txn_kinds(db) == []


def test_a_dead_letter_keeps_the_message_id_and_queue(db, make_pipeline):
    pipeline = make_pipeline("delivered")
    run(pipeline, "not json", message_id="msg-77", queue="credits.flow")
    (letter,) = dead_letters(db)
    assert (letter.message_id, letter.queue) == ("msg-77", "credits.flow")
    assert letter.body == "not json"


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        ("{not json", "job must be a JSON object, got str"),
        ([1, 2, 3], "job must be a JSON object, got list"),
        (None, "job must be a JSON object, got NoneType"),
        ({"job_id": "bad-1", "member_id": 1, "action": "fax"}, "action: unknown action 'fax'"),
        (
            {"job_id": "bad-2", "member_id": "1", "action": "email", "to": "a@b.c"},
            "member_id: Input should be a valid integer",
        ),
        (
            {"job_id": "bad-3", "member_id": 1, "action": "gift_card", "denomination": "25"},
            "denomination: Input should be a valid integer",
        ),
    ],
)
def test_an_invalid_payload_is_dead_lettered_with_a_reason_naming_the_problem(
    db, make_pipeline, payload, named
):
    member_with(db, 20)
    pipeline = make_pipeline("delivered")
    result = run(pipeline, payload)
    assert result["status"] == "dead_letter"
    (letter,) = dead_letters(db)
    assert named in letter.reason
    assert job_count(db) == 0
    assert txn_kinds(db) == ["topup", "allocate", "allocate"]  # only the funding
    assert reconcile(db).ok


def test_an_invalid_payload_with_a_usable_job_id_tells_the_producer(db, make_pipeline):
    pipeline = make_pipeline("delivered")
    run(pipeline, {"job_id": "bad-1", "member_id": 1, "action": "fax"})
    (event,) = events_of(pipeline, "bad-1")
    assert (event["status"], event["final"]) == ("rejected", "1")
    assert "unknown action 'fax'" in event["reason"]
    assert dead_letters(db)[0].job_id == "bad-1"


def test_an_invalid_payload_without_a_job_id_publishes_nothing(db, make_pipeline):
    pipeline = make_pipeline("delivered")
    run(pipeline, [1, 2, 3])
    assert list(pipeline.res.events.all()) == []
    assert dead_letters(db)[0].job_id is None


def test_a_gift_card_denomination_outside_the_catalog_is_rejected_and_not_charged(
    db, make_pipeline
):
    member = member_with(db, 50)
    pipeline = make_pipeline("delivered")
    gift = {
        "job_id": "g-1",
        "member_id": member,
        "action": "gift_card",
        "brand": "Amazon",
        "denomination": 7,
        "recipient": ADDRESS,
        "return_address": ADDRESS,
    }
    result = run(pipeline, gift)
    assert result == {"job_id": "g-1", "member_id": member, "status": "rejected", "cost": 0}
    found = report(db, "g-1")
    assert found.job.status == "rejected"
    assert "denomination 7 is not offered" in found.job.detail
    assert found.hold is None
    assert wallet(db, member) == (50, 0)
    assert txn_kinds(db, "g-1") == []
    assert sends(pipeline, member, "g-1") == 0
    (event,) = events_of(pipeline, "g-1")
    assert (event["status"], event["final"]) == ("rejected", "1")
    assert "denomination 7 is not offered" in event["reason"]


def test_a_gift_card_in_the_catalog_costs_its_denomination_plus_the_fee(db, make_pipeline):
    member = member_with(db, 50)
    pipeline = make_pipeline("delivered")
    gift = {
        "job_id": "g-1",
        "member_id": member,
        "action": "gift_card",
        "brand": "Amazon",
        "denomination": 25,
        "recipient": ADDRESS,
        "return_address": ADDRESS,
    }
    result = run(pipeline, gift)
    cost = 25 + pipeline.res.catalog.gift_card_fee
    assert result == {"job_id": "g-1", "member_id": member, "status": "completed", "cost": cost}
    assert wallet(db, member) == (50 - cost, 0)


# ---------------------------------------------------------------- locks


def test_a_delivery_of_a_job_whose_attempt_is_running_is_retried_and_changes_nothing(
    db, make_pipeline
):
    # given an attempt that is still talking to the vendor (its lease runs)
    member = member_with(db, 20)
    pipeline = make_pipeline("timeout")
    run(pipeline, note("j-1", member))  # in doubt: no lease left, the resolver's turn
    with db.unit_of_work() as session:
        running = utcnow() + timedelta(seconds=60)
        session.execute(update(Job).where(Job.job_id == "j-1").values(next_attempt_at=running))
        session.commit()
    # when a second delivery of the message arrives
    with pytest.raises(LockBusy):
        run(pipeline, note("j-1", member))
    # then it counts no attempt and calls no vendor
    assert report(db, "j-1").job.attempts == 1


def test_an_accepted_attempt_holds_the_jobs_lease_for_one_vendor_call(db, make_pipeline):
    member = member_with(db, 20)
    pipeline = make_pipeline("transient", stub_transient_attempts=1, retry_backoff_base_s=30,
                             retry_backoff_max_s=60)  # fmt: skip
    with pytest.raises(RetryLater) as caught:
        run(pipeline, note("j-1", member))
    # the lease now lasts until the retry is due: an early delivery is told to come back
    assert lease_of(db, "j-1") is not None
    with pytest.raises(LockBusy):
        run(pipeline, note("j-1", member))
    assert caught.value.countdown_s >= 15
    retry_is_due(db, "j-1")
    assert run(pipeline, note("j-1", member))["status"] == "completed"


def test_another_members_job_with_the_same_id_has_a_lease_of_its_own(db, make_pipeline):
    member, other = member_with(db, 20), member_with(db, 20)
    pipeline = make_pipeline("transient", stub_transient_attempts=1, retry_backoff_base_s=30,
                             retry_backoff_max_s=60)  # fmt: skip
    with pytest.raises(RetryLater):
        run(pipeline, note("j-1", member))
    with pytest.raises(RetryLater):  # not LockBusy: the other member's job is another job
        run(pipeline, note("j-1", other))


def test_a_busy_member_wallet_lock_is_retried_and_records_nothing(db, make_pipeline):
    member = member_with(db, 20)
    pipeline = make_pipeline("delivered", lock_blocking_timeout_s=0.05)
    with pipeline.res.locks.member(member) as locked:
        assert locked
        with pytest.raises(LockBusy):
            run(pipeline, note("j-1", member))
    assert job_count(db) == 0
    assert wallet(db, member) == (20, 0)
    assert run(pipeline, note("j-1", member))["status"] == "completed"


def test_a_free_action_does_not_wait_for_the_member_wallet_lock(db, make_pipeline):
    member = member_with(db, 0)
    pipeline = make_pipeline("delivered", lock_blocking_timeout_s=0.05)
    with pipeline.res.locks.member(member):
        assert run(pipeline, email("e-1", member))["status"] == "completed"


def test_the_locks_are_released_after_each_message(db, make_pipeline):
    member = member_with(db, 20)
    pipeline = make_pipeline("delivered")
    run(pipeline, note("j-1", member))
    assert pipeline.res.redis.keys("*lock:*") == []


# ---------------------------------------------------------------- concurrency


def test_racing_jobs_for_one_member_never_spend_more_than_it_has(db, make_pipeline):
    member = member_with(db, 2 * NOTE_COST)
    pipeline = make_pipeline("delivered", lock_blocking_timeout_s=5)
    results = race(5, lambda i: run(pipeline, note(f"race-{i}", member))["status"])
    assert sorted(results) == ["awaiting_credits"] * 3 + ["completed"] * 2
    assert wallet(db, member) == (0, 0)
    assert spent(db) == 2 * NOTE_COST
    assert reconcile(db).ok


def test_two_deliveries_of_one_job_at_once_charge_and_send_it_once(db, make_pipeline):
    member = member_with(db, 20)
    pipeline = make_pipeline("delivered")
    outcomes = race(2, lambda _: run(pipeline, note("j-1", member))["status"])
    assert "completed" in outcomes
    assert all(o == "completed" or isinstance(o, LockBusy) for o in outcomes), outcomes
    assert txn_kinds(db, "j-1") == ["hold", "capture"]
    assert sends(pipeline, member, "j-1") == 1
    assert len(events_of(pipeline, "j-1")) == 1


# ---------------------------------------------------------------- signatures


def test_an_unsigned_job_charges_nobody_and_is_kept_as_a_dead_letter(db, make_pipeline):
    member = member_with(db, 50)
    pipeline = make_pipeline("delivered")
    result = pipeline.process((), {"job": gift_card("g-1", member)}, queue="credits.flow")
    assert result["status"] == "dead_letter"
    (letter,) = dead_letters(db)
    assert letter.reason == "unsigned job: no signature was sent with it"
    assert (letter.job_id, letter.member_id, letter.queue) == ("g-1", member, "credits.flow")
    assert job_count(db) == 0
    assert wallet(db, member) == (50, 0)
    assert events_of(pipeline, "g-1") == []  # nobody may speak for a job it cannot sign


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda m: m["job"].update(denomination=50), "bad signature for key id 'test-key'"),
        (lambda m: m["job"].update(member_id=m["job"]["member_id"] + 1), "bad signature"),
        (lambda m: m["auth"].update(key_id="other"), "signed with unknown key id 'other'"),
        (lambda m: m["auth"].update(sig="0" * 64), "forged or altered job"),
        (lambda m: m.update(auth="yes"), "malformed signature"),
    ],
)
def test_a_forged_or_altered_job_charges_nobody(db, make_pipeline, tamper, reason):
    member = member_with(db, 100)
    pipeline = make_pipeline("delivered")
    forged = message(gift_card("g-1", member, 25))
    tamper(forged)
    assert pipeline.process((), forged)["status"] == "dead_letter"
    assert reason in dead_letters(db)[0].reason
    assert job_count(db) == 0
    assert wallet(db, member) == (100, 0)


def test_a_job_signed_with_a_retired_key_still_in_the_verify_list_is_accepted(db, make_pipeline):
    member = member_with(db, 20)
    old = ("2025-q4", "o" * 40)
    pipeline = make_pipeline("delivered", job_verify_keys=f"{old[0]}:{old[1]}")
    result = pipeline.process((), message(note("j-1", member), key=old))
    assert result["status"] == "completed"
    assert report(db, "j-1").key_id == "2025-q4"


@pytest.mark.parametrize(
    ("args", "kwargs", "reason"),
    [
        ((1, 2), {}, "unexpected 2 positional argument(s)"),
        ((), {"job": {}, "auth": {}, "extra": 1}, "unexpected arguments ['extra']"),
    ],
)
def test_a_message_with_wrong_arguments_is_a_dead_letter(db, make_pipeline, args, kwargs, reason):
    pipeline = make_pipeline("delivered")
    assert pipeline.process(args, kwargs)["status"] == "dead_letter"
    assert dead_letters(db)[0].reason == reason
