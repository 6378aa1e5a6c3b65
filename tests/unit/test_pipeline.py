"""The send pipeline, driven directly: SQLite for the ledger, in-process fakeredis for the
locks, the event stream and the stub vendor. No Celery here; ``RetryLater`` is what the
task would turn into a retry.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import func, select

from shared.config import load_settings
from shared.db import Database
from shared.errors import NotFound
from shared.models import DeadLetter, Job, JobTransition, LedgerTransaction, Wallet
from shared.services import balances, jobs, ledger
from shared.services.reconcile import reconcile
from tests.factories import ADDRESS, email, funded_member, note
from worker.pipeline import RetryLater, SendPipeline
from worker.resources import Resources

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
        rates = {f"stub_{name}_rate": 0.0 for name in ("delivered", "rejected", "transient")}
        rates["stub_timeout_rate"] = 0.0
        rates[f"stub_{outcome}_rate"] = 1.0
        settings = load_settings(
            database_url=sqlite_url,
            redis_url=f"memory://{uuid.uuid4().hex}",
            broker_url="memory://",
            stub_latency_ms=0,
            **{**rates, **overrides},
        )
        resources = Resources(settings)
        made.append(resources)
        return SendPipeline(resources)

    yield make
    for resources in made:
        resources.close()


def member_with(db: Database, credits: int) -> int:
    return funded_member(db, account_credits=100, member_credits=credits).member_id


def events_of(pipeline: SendPipeline, job_id: str) -> list[dict[str, str]]:
    return [e for e in pipeline.res.events.all() if e.get("job_id") == job_id]


def spent(db: Database) -> int:
    with db.unit_of_work() as session:
        return session.scalar(select(Wallet.available).where(Wallet.system_name == "spent"))


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


def wallet(db: Database, member_id: int) -> tuple[int, int]:
    found = balances.balance(db, "member", member_id)
    return found.available, found.held


# ---------------------------------------------------------------- delivered


def test_a_delivered_note_completes_and_captures_its_hold(db, make_pipeline):
    member = member_with(db, 20)
    pipeline = make_pipeline("delivered")
    result = pipeline.process(note("j-1", member))
    assert result == {"job_id": "j-1", "status": "completed", "cost": NOTE_COST}
    report = jobs.job_report(db, "j-1")
    assert report.job.status == "completed"
    assert report.job.attempts == 1
    assert report.vendor_ref.startswith("PH-")
    assert report.hold["state"] == "captured"
    assert report.hold["amount"] == NOTE_COST
    assert spent(db) == NOTE_COST
    assert wallet(db, member) == (20 - NOTE_COST, 0)
    assert txn_kinds(db, "j-1") == ["hold", "capture"]
    assert transitions(db, "j-1") == ["received", "reserved", "submitted", "completed"]
    assert pipeline.res.provider.sends("j-1") == 1
    assert reconcile(db).ok


def test_a_completed_job_publishes_one_final_event_with_what_the_flow_engine_needs(
    db, make_pipeline
):
    member = member_with(db, 20)
    pipeline = make_pipeline("delivered")
    pipeline.process(note("j-1", member, flow_id="flow-9", step_id="step-3"))
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
    pipeline.process({**postcard, "recipient": abroad})
    view = jobs.get_view(db, "p-1")
    assert view.cost == pipeline.res.catalog.postcard_international
    assert view.catalog_version == pipeline.res.catalog.version
    assert view.payload["recipient"]["country"] == "DE"


# ---------------------------------------------------------------- rejected by the vendor


def test_a_rejected_note_is_refunded_and_the_balance_restored(db, make_pipeline):
    member = member_with(db, 20)
    pipeline = make_pipeline("rejected")
    result = pipeline.process(note("j-1", member))
    assert result["status"] == "refunded"
    report = jobs.job_report(db, "j-1")
    assert report.job.status == "refunded"
    assert "address undeliverable" in report.job.detail
    assert report.hold["state"] == "released"
    assert wallet(db, member) == (20, 0)
    assert spent(db) == 0
    assert txn_kinds(db, "j-1") == ["hold", "release"]
    (event,) = events_of(pipeline, "j-1")
    assert (event["status"], event["final"]) == ("refunded", "1")
    assert "address undeliverable" in event["reason"]
    assert event["available"] == "20"
    assert reconcile(db).ok


# ---------------------------------------------------------------- transient vendor errors


def test_a_transient_error_asks_for_a_retry_and_keeps_the_hold(db, make_pipeline):
    member = member_with(db, 20)
    pipeline = make_pipeline("transient", stub_transient_attempts=1)
    with pytest.raises(RetryLater) as caught:
        pipeline.process(note("j-1", member))
    assert caught.value.counts
    assert caught.value.countdown_s > 0
    report = jobs.job_report(db, "j-1")
    assert report.job.status == "submitted"
    assert "HTTP 503" in report.job.detail
    assert report.hold["state"] == "held"
    assert wallet(db, member) == (20 - NOTE_COST, NOTE_COST)
    assert events_of(pipeline, "j-1") == []
    assert reconcile(db).ok


def test_a_retried_job_completes_on_the_next_delivery_and_is_sent_once(db, make_pipeline):
    member = member_with(db, 20)
    pipeline = make_pipeline("transient", stub_transient_attempts=1)
    with pytest.raises(RetryLater):
        pipeline.process(note("j-1", member))
    result = pipeline.process(note("j-1", member))
    assert result["status"] == "completed"
    report = jobs.job_report(db, "j-1")
    assert report.job.attempts == 2
    assert report.hold["state"] == "captured"
    assert pipeline.res.provider.sends("j-1") == 1
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
            pipeline.process(note("j-1", member))
        countdowns.append(caught.value.countdown_s)
    ceilings = [1.0, 2.0, 4.0, 4.0, 4.0]
    assert all(c / 2 <= d <= c for d, c in zip(countdowns, ceilings, strict=True)), countdowns


def test_when_retries_are_exhausted_the_job_stays_submitted_with_its_hold(db, make_pipeline):
    member = member_with(db, 20)
    pipeline = make_pipeline("transient", retry_max=0, stub_transient_attempts=5)
    result = pipeline.process(note("j-1", member))
    assert result["status"] == "submitted"
    report = jobs.job_report(db, "j-1")
    assert report.job.status == "submitted"
    assert report.hold["state"] == "held"
    assert wallet(db, member) == (20 - NOTE_COST, NOTE_COST)
    assert pipeline.res.provider.sends("j-1") == 0
    (event,) = events_of(pipeline, "j-1")
    assert (event["status"], event["final"]) == ("submitted", "0")
    assert event["reason"].startswith("retries exhausted")
    assert reconcile(db).ok


def test_vendor_attempts_count_across_deliveries_against_retry_max(db, make_pipeline):
    member = member_with(db, 20)
    pipeline = make_pipeline("transient", retry_max=2, stub_transient_attempts=10)
    for _ in range(2):
        with pytest.raises(RetryLater):
            pipeline.process(note("j-1", member))
    assert pipeline.process(note("j-1", member))["status"] == "submitted"
    assert jobs.get_view(db, "j-1").attempts == 3


# ---------------------------------------------------------------- timeouts


def test_a_vendor_timeout_leaves_the_job_submitted_with_its_hold_in_doubt(db, make_pipeline):
    member = member_with(db, 20)
    pipeline = make_pipeline("timeout")
    result = pipeline.process(note("j-1", member))
    assert result["status"] == "submitted"
    report = jobs.job_report(db, "j-1")
    assert report.job.status == "submitted"
    assert "did not answer" in report.job.detail
    assert report.hold["state"] == "held"
    assert wallet(db, member) == (20 - NOTE_COST, NOTE_COST)
    (event,) = events_of(pipeline, "j-1")
    assert (event["status"], event["final"]) == ("submitted", "0")
    assert event["reason"].startswith("in doubt")
    assert reconcile(db).ok


# ---------------------------------------------------------------- insufficient credits


def test_a_member_short_of_credits_parks_the_job_without_a_hold(db, make_pipeline):
    member = member_with(db, 3)
    pipeline = make_pipeline("delivered")
    result = pipeline.process(note("j-1", member))
    assert result["status"] == "awaiting_credits"
    report = jobs.job_report(db, "j-1")
    assert report.job.status == "awaiting_credits"
    assert report.hold is None
    assert wallet(db, member) == (3, 0)
    assert txn_kinds(db, "j-1") == []
    assert pipeline.res.provider.sends("j-1") == 0
    (event,) = events_of(pipeline, "j-1")
    assert (event["status"], event["final"]) == ("awaiting_credits", "0")
    assert f"3 credits available, {NOTE_COST} needed" in event["reason"]
    assert event["cost"] == str(NOTE_COST)


def test_a_parked_job_completes_when_processed_again_after_credits_arrive(db, make_pipeline):
    tree = funded_member(db, account_credits=100, member_credits=3)
    pipeline = make_pipeline("delivered")
    pipeline.process(note("j-1", tree.member_id))
    ledger.allocate(db, "workspace", tree.workspace_id, amount=10)
    ledger.allocate(db, "member", tree.member_id, amount=10)
    assert pipeline.process(note("j-1", tree.member_id))["status"] == "completed"
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
    pipeline.process(note("j-1", member))
    assert pipeline.process(note("j-1", member))["status"] == "awaiting_credits"
    assert transitions(db, "j-1") == ["received", "awaiting_credits"]
    assert len(events_of(pipeline, "j-1")) == 1


# ---------------------------------------------------------------- free actions


def test_a_free_email_completes_with_cost_zero_and_no_ledger_entries(db, make_pipeline):
    member = member_with(db, 0)
    pipeline = make_pipeline("delivered")
    before = txn_kinds(db)
    result = pipeline.process(email("e-1", member))
    assert result == {"job_id": "e-1", "status": "completed", "cost": 0}
    report = jobs.job_report(db, "e-1")
    assert report.hold is None
    assert report.vendor_ref.startswith("CH-")
    assert txn_kinds(db) == before
    assert spent(db) == 0
    (event,) = events_of(pipeline, "e-1")
    assert (event["status"], event["cost"]) == ("completed", "0")


def test_a_free_action_the_vendor_rejects_is_refunded_without_ledger_entries(db, make_pipeline):
    member = member_with(db, 0)
    pipeline = make_pipeline("rejected")
    assert pipeline.process(email("e-1", member))["status"] == "refunded"
    assert txn_kinds(db, "e-1") == []
    assert reconcile(db).ok


# ---------------------------------------------------------------- redelivery and conflicts


def test_processing_a_finished_job_again_changes_nothing(db, make_pipeline):
    member = member_with(db, 20)
    pipeline = make_pipeline("delivered")
    first = pipeline.process(note("j-1", member))
    history = transitions(db, "j-1")
    again = pipeline.process(note("j-1", member))
    assert again == first
    assert transitions(db, "j-1") == history
    assert txn_kinds(db, "j-1") == ["hold", "capture"]
    assert spent(db) == NOTE_COST
    assert wallet(db, member) == (20 - NOTE_COST, 0)
    assert pipeline.res.provider.sends("j-1") == 1
    assert len(events_of(pipeline, "j-1")) == 1


def test_the_same_job_id_with_other_content_is_dead_lettered_and_charges_nobody(db, make_pipeline):
    member = member_with(db, 20)
    other = member_with(db, 20)
    pipeline = make_pipeline("delivered")
    pipeline.process(note("j-1", member))
    result = pipeline.process(note("j-1", other, message="A different note"))
    assert result["status"] == "dead_letter"
    assert "already received with different content" in result["reason"]
    (letter,) = dead_letters(db)
    assert letter.job_id == "j-1"
    assert "different content" in letter.reason
    assert "A different note" in letter.body
    view = jobs.get_view(db, "j-1")
    assert (view.status, view.member_id) == ("completed", member)
    assert view.payload["message"] == "Thanks for the call!"
    assert wallet(db, member) == (20 - NOTE_COST, 0)
    assert wallet(db, other) == (20, 0)
    assert spent(db) == NOTE_COST
    assert [e["status"] for e in events_of(pipeline, "j-1")] == ["completed"]


def test_a_conflicting_job_before_the_original_finished_leaves_the_original_alone(
    db, make_pipeline
):
    member = member_with(db, 20)
    pipeline = make_pipeline("timeout")
    pipeline.process(note("j-1", member))
    assert pipeline.process(note("j-1", member, message="Other"))["status"] == "dead_letter"
    report = jobs.job_report(db, "j-1")
    assert report.job.status == "submitted"
    assert report.hold["state"] == "held"
    assert report.job.attempts == 1


def test_an_unknown_member_is_dead_lettered_and_the_producer_hears_rejected(db, make_pipeline):
    pipeline = make_pipeline("delivered")
    result = pipeline.process(note("j-1", 424242))
    assert result["status"] == "dead_letter"
    (letter,) = dead_letters(db)
    assert letter.job_id == "j-1"
    assert letter.reason == "member 424242 does not exist"
    assert letter.task_name == "credits.send_action"
    with pytest.raises(NotFound):
        jobs.get_view(db, "j-1")
    (event,) = events_of(pipeline, "j-1")
    assert (event["status"], event["final"]) == ("rejected", "1")
    assert "member 424242 does not exist" in event["reason"]
    assert txn_kinds(db) == []


def test_a_dead_letter_keeps_the_message_id(db, make_pipeline):
    pipeline = make_pipeline("delivered")
    pipeline.process("not json", message_id="msg-77")
    (letter,) = dead_letters(db)
    assert letter.message_id == "msg-77"
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
    result = pipeline.process(payload)
    assert result["status"] == "dead_letter"
    (letter,) = dead_letters(db)
    assert named in letter.reason
    assert job_count(db) == 0
    assert txn_kinds(db) == ["topup", "allocate", "allocate"]  # only the funding
    assert reconcile(db).ok


def test_an_invalid_payload_with_a_usable_job_id_tells_the_producer(db, make_pipeline):
    pipeline = make_pipeline("delivered")
    pipeline.process({"job_id": "bad-1", "member_id": 1, "action": "fax"})
    (event,) = events_of(pipeline, "bad-1")
    assert (event["status"], event["final"]) == ("rejected", "1")
    assert "unknown action 'fax'" in event["reason"]
    assert dead_letters(db)[0].job_id == "bad-1"


def test_an_invalid_payload_without_a_job_id_publishes_nothing(db, make_pipeline):
    pipeline = make_pipeline("delivered")
    pipeline.process([1, 2, 3])
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
    result = pipeline.process(gift)
    assert result == {"job_id": "g-1", "status": "rejected", "cost": 0}
    report = jobs.job_report(db, "g-1")
    assert report.job.status == "rejected"
    assert "denomination 7 is not offered" in report.job.detail
    assert report.hold is None
    assert wallet(db, member) == (50, 0)
    assert txn_kinds(db, "g-1") == []
    assert pipeline.res.provider.sends("g-1") == 0
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
    result = pipeline.process(gift)
    cost = 25 + pipeline.res.catalog.gift_card_fee
    assert result == {"job_id": "g-1", "status": "completed", "cost": cost}
    assert wallet(db, member) == (50 - cost, 0)


# ---------------------------------------------------------------- locks


def test_a_job_locked_by_another_delivery_is_retried_without_counting(db, make_pipeline):
    member = member_with(db, 20)
    pipeline = make_pipeline("delivered")
    with pipeline.res.locks.job("j-1") as locked:
        assert locked
        with pytest.raises(RetryLater) as caught:
            pipeline.process(note("j-1", member))
    assert caught.value.counts is False
    assert caught.value.countdown_s > 0
    assert job_count(db) == 0
    assert pipeline.process(note("j-1", member))["status"] == "completed"


def test_a_busy_member_wallet_lock_is_retried_without_counting(db, make_pipeline):
    member = member_with(db, 20)
    pipeline = make_pipeline("delivered", lock_blocking_timeout_s=0.05)
    with pipeline.res.locks.member(member) as locked:
        assert locked
        with pytest.raises(RetryLater) as caught:
            pipeline.process(note("j-1", member))
    assert caught.value.counts is False
    report = jobs.job_report(db, "j-1")
    assert report.job.status == "received"
    assert report.hold is None
    assert pipeline.process(note("j-1", member))["status"] == "completed"


def test_the_locks_are_released_after_each_message(db, make_pipeline):
    member = member_with(db, 20)
    pipeline = make_pipeline("delivered")
    pipeline.process(note("j-1", member))
    assert pipeline.res.redis.keys("*lock:*") == []


# ---------------------------------------------------------------- concurrency


def test_racing_jobs_for_one_member_never_spend_more_than_it_has(db, make_pipeline):
    member = member_with(db, 2 * NOTE_COST)
    pipeline = make_pipeline("delivered")
    barrier = threading.Barrier(5)
    results: list[object] = []

    def send(i: int) -> None:
        barrier.wait()
        try:
            results.append(pipeline.process(note(f"race-{i}", member))["status"])
        except Exception as exc:  # a failure is asserted on below
            results.append(exc)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results) == ["awaiting_credits"] * 3 + ["completed"] * 2
    assert wallet(db, member) == (0, 0)
    assert spent(db) == 2 * NOTE_COST
    assert reconcile(db).ok


def test_two_deliveries_of_one_job_at_once_charge_and_send_it_once(db, make_pipeline):
    member = member_with(db, 20)
    pipeline = make_pipeline("delivered")
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def deliver() -> None:
        barrier.wait()
        try:
            outcomes.append(pipeline.process(note("j-1", member))["status"])
        except RetryLater:
            outcomes.append("retry_later")

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert "completed" in outcomes
    assert set(outcomes) <= {"completed", "retry_later"}
    assert txn_kinds(db, "j-1") == ["hold", "capture"]
    assert pipeline.res.provider.sends("j-1") == 1
    assert len(events_of(pipeline, "j-1")) == 1
