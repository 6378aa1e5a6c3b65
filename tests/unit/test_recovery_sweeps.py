"""Recovery sweeps on SQLite: a poison job is given up, not re-sent for ever."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from shared.models import Job, utcnow
from shared.pricing import load_catalog
from shared.schemas import parse_job
from shared.services import balances, jobs, recovery
from shared.services.reconcile import reconcile
from tests.factories import funded_member


def stale_reserved_note(db, member_id: int, job_id: str) -> None:
    spec = parse_job({"job_id": job_id, "member_id": member_id, "action": "accept_lead",
                      "lead_id": "l"})  # fmt: skip
    jobs.receive(db, spec, load_catalog())
    jobs.reserve(db, job_id, hold_ttl_s=60, max_wait_s=60)
    age(db)


def age(db) -> None:
    with db.unit_of_work() as session:
        session.execute(update(Job).values(updated_at=utcnow() - timedelta(hours=1)))


def test_a_stale_job_is_resent_until_the_limit_then_given_up_with_its_hold_released(db):
    tree = funded_member(db, account_credits=10, member_credits=10)
    stale_reserved_note(db, tree.member_id, "poison-1")
    assert balances.balance(db, "member", tree.member_id).held == 1
    for round_ in range(3):
        batch = recovery.claim_stale(db, older_than_s=60, max_resends=3, limit=10)
        assert [c.job_id for c in batch.resend] == ["poison-1"], round_
        age(db)
    batch = recovery.claim_stale(db, older_than_s=60, max_resends=3, limit=10)
    assert batch.resend == []
    assert [(v.job_id, v.status, v.final) for v in batch.given_up] == [
        ("poison-1", "refunded", True)
    ]
    assert "gave up after 3 re-sends" in batch.given_up[0].detail
    wallet = balances.balance(db, "member", tree.member_id)
    assert (wallet.available, wallet.held) == (10, 0)
    assert reconcile(db).ok


def test_a_received_job_that_is_given_up_ends_rejected_and_charges_nobody(db):
    tree = funded_member(db, account_credits=10, member_credits=10)
    spec = parse_job({"job_id": "p2", "member_id": tree.member_id, "action": "task",
                      "title": "t"})  # fmt: skip
    jobs.receive(db, spec, load_catalog())
    age(db)
    batch = recovery.claim_stale(db, older_than_s=60, max_resends=1, limit=10)
    assert [c.job_id for c in batch.resend] == ["p2"]
    age(db)
    batch = recovery.claim_stale(db, older_than_s=60, max_resends=1, limit=10)
    assert [(v.job_id, v.status) for v in batch.given_up] == [("p2", "rejected")]
    assert balances.balance(db, "member", tree.member_id).available == 10
