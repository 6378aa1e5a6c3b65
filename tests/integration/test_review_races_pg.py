"""Races found in review, pinned on PostgreSQL (SQLite's BEGIN IMMEDIATE hides them)."""

from __future__ import annotations

import threading
import time

from sqlalchemy import func, select

from shared.models import Hold
from shared.pricing import load_catalog
from shared.schemas import parse_job
from shared.services import balances, directory, jobs, ledger
from shared.services.reconcile import reconcile
from tests.factories import funded_member


def test_a_reservation_waiting_on_the_expire_sweep_takes_no_hold(db):
    # given a parked job whose member can now pay
    tree = funded_member(db, account_credits=10, member_credits=0)
    spec = parse_job({"job_id": "race-1", "member_id": tree.member_id, "action": "accept_lead",
                      "lead_id": "l"})  # fmt: skip
    jobs.receive(db, spec, load_catalog())
    jobs.reserve(db, "race-1", hold_ttl_s=60, max_wait_s=60)
    ledger.allocate(db, "workspace", tree.workspace_id, amount=1)
    ledger.allocate(db, "member", tree.member_id, amount=1)
    # when the expire sweep holds the row (expiring it) while a worker tries to reserve
    sweep = db.engine.connect()
    tx = sweep.begin()
    sweep.exec_driver_sql("SELECT id FROM jobs WHERE job_id = 'race-1' FOR UPDATE")
    sweep.exec_driver_sql("UPDATE jobs SET status = 'expired' WHERE job_id = 'race-1'")
    result = {}
    worker = threading.Thread(
        target=lambda: result.setdefault(
            "view", jobs.reserve(db, "race-1", hold_ttl_s=60, max_wait_s=60)
        )
    )
    worker.start()
    time.sleep(0.5)  # the worker is now blocked on the row lock
    tx.commit()
    sweep.close()
    worker.join(10)
    # then the worker sees the job expired, and no credit is held
    assert result["view"].status == "expired" and not result["view"].changed
    with db.unit_of_work() as session:
        assert session.scalar(select(func.count()).select_from(Hold)) == 0
    assert balances.balance(db, "member", tree.member_id).available == 1
    assert reconcile(db).ok


def test_two_allocations_with_one_key_at_once_both_succeed_once(db):
    account = directory.create_account(db, "Acme")
    ledger.topup(db, account.id, 50)
    workspace = directory.create_workspace(db, account.id, "Sales")
    barrier = threading.Barrier(2)
    results = []

    def allocate() -> None:
        barrier.wait()
        results.append(ledger.allocate(db, "workspace", workspace.id, amount=50, key="k1"))

    threads = [threading.Thread(target=allocate) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 2
    assert sorted(r.replayed for r in results) == [False, True]
    assert len({r.transaction_id for r in results}) == 1
    assert balances.balance(db, "workspace", workspace.id).available == 50
