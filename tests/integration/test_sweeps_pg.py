"""Two sweeps running at once on PostgreSQL never take the same row (SKIP LOCKED + lease)."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import update

from shared.models import Job, utcnow
from shared.pricing import load_catalog
from shared.schemas import parse_job
from shared.services import jobs, recovery
from tests.factories import funded_member


def record(db, member_id: int, n: int, status: str) -> None:
    catalog = load_catalog()
    for i in range(n):
        spec = parse_job({"job_id": f"{status}-{i}", "member_id": member_id, "action": "task",
                          "title": "t"})  # fmt: skip
        jobs.receive(db, spec, catalog)
    long_ago = utcnow() - timedelta(hours=1)
    with db.unit_of_work() as session:
        session.execute(update(Job).values(status=status, updated_at=long_ago))


def race(fn, runs: int = 4) -> list[list[str]]:
    barrier = threading.Barrier(runs)
    results: list[list[str]] = [[] for _ in range(runs)]

    def run(i: int) -> None:
        barrier.wait()
        results[i] = [c.job_id for c in fn()]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(runs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_concurrent_stale_sweeps_claim_disjoint_batches(db):
    tree = funded_member(db, account_credits=10, member_credits=10)
    record(db, tree.member_id, 40, "received")
    claimed = race(
        lambda: recovery.claim_stale(db, older_than_s=60, max_resends=5, limit=15).resend
    )
    flat = [job_id for batch in claimed for job_id in batch]
    assert len(flat) == len(set(flat))  # no row taken twice
    assert len(flat) == 40  # 4 sweeps x 15 cover all 40
    # and the lease keeps a second round from taking them again at once
    assert recovery.claim_stale(db, older_than_s=60, max_resends=5, limit=100).resend == []


def test_concurrent_in_doubt_sweeps_claim_disjoint_batches(db):
    tree = funded_member(db, account_credits=10, member_credits=10)
    record(db, tree.member_id, 30, "submitted")
    claimed = race(lambda: recovery.claim_in_doubt(db, older_than_s=60, idle_s=60, limit=10))
    flat = [job_id for batch in claimed for job_id in batch]
    assert len(flat) == len(set(flat)) == 30
