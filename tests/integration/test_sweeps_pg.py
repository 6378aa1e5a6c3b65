"""Two sweeps running at once on PostgreSQL never take the same row (SKIP LOCKED + lease)."""

from __future__ import annotations

from shared.services import recovery
from tests.factories import funded_member, recorded_job
from tests.helpers import failures, race


def record(db, member_id: int, n: int, status: str) -> None:
    """``n`` free jobs left in ``status`` an hour ago."""
    for i in range(n):
        job = {"job_id": f"{status}-{i}", "member_id": member_id, "action": "task", "title": "t"}
        recorded_job(db, job, status=status, age_s=3600)


def test_concurrent_stale_sweeps_claim_disjoint_batches(db):
    tree = funded_member(db, account_credits=10, member_credits=10)
    record(db, tree.member_id, 40, "received")

    def sweep(_i: int) -> list[str]:
        batch = recovery.claim_stale(db, older_than_s=60, max_resends=5, limit=15, notify=None)
        return [c.job_id for c in batch.resend]

    claimed = race(4, sweep)
    assert failures(claimed) == []
    flat = [job_id for batch in claimed for job_id in batch]
    assert len(flat) == len(set(flat))  # no row taken twice
    assert len(flat) == 40  # 4 sweeps x 15 cover all 40
    # and the lease keeps a second round from taking them again at once
    again = recovery.claim_stale(db, older_than_s=60, max_resends=5, limit=100, notify=None)
    assert again.resend == []


def test_concurrent_in_doubt_sweeps_claim_disjoint_batches(db):
    tree = funded_member(db, account_credits=10, member_credits=10)
    record(db, tree.member_id, 30, "submitted")

    def sweep(_i: int) -> list[str]:
        batch = recovery.claim_in_doubt(db, older_than_s=60, redelivery_s=60, lease_s=60, limit=10)
        return [c.job_id for c in batch]

    claimed = race(4, sweep)
    assert failures(claimed) == []
    flat = [job_id for batch in claimed for job_id in batch]
    assert len(flat) == len(set(flat)) == 30
