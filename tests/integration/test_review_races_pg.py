"""Races found in review, pinned on PostgreSQL (SQLite's BEGIN IMMEDIATE hides them)."""

from __future__ import annotations

import threading
from contextlib import closing

from sqlalchemy import func, select

from shared.models import Hold
from shared.pricing import load_catalog
from shared.schemas import parse_job
from shared.services import balances, directory, jobs, ledger, recovery
from shared.services.reconcile import reconcile
from tests.factories import funded_member
from tests.helpers import failures, interleave, race, wait_until
from tests.services import pg_admin

ACCEPT = {"hold_ttl_s": 60, "max_wait_s": 60, "attempt_window_s": 3}


def waiting_on_a_lock(database: str) -> int:
    """How many sessions of ``database`` are blocked on a lock right now."""
    with closing(pg_admin()) as admin:
        return admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
            (database,),
        ).fetchone()[0]


def test_a_reservation_waiting_on_the_expire_sweep_takes_no_hold(db):
    # given a parked job past its wait, whose member can now pay
    tree = funded_member(db, account_credits=10, member_credits=0)
    spec = parse_job({"job_id": "race-1", "member_id": tree.member_id, "action": "accept_lead",
                      "lead_id": "l"})  # fmt: skip
    parked = jobs.accept(db, spec, load_catalog(), **{**ACCEPT, "max_wait_s": 0.001})
    assert parked.status == "awaiting_credits"
    ledger.allocate(db, "workspace", tree.workspace_id, amount=1)
    ledger.allocate(db, "member", tree.member_id, amount=1)

    # when the expire sweep has expired the row but not yet committed ...
    result: dict[str, object] = {}
    with interleave(recovery, "_expire") as sweep_point:
        sweep = threading.Thread(target=lambda: recovery.sweep_awaiting(db, lease_s=60, limit=10))
        sweep.start()
        assert sweep_point.reached.wait(10), "the sweep never expired the job"
        # ... and a worker's reservation of the same job is blocked on the sweep's row lock
        worker = threading.Thread(
            target=lambda: result.setdefault("view", jobs.accept(db, spec, load_catalog(),
                                                                 **ACCEPT))
        )  # fmt: skip
        worker.start()
        wait_until(lambda: waiting_on_a_lock(db.engine.url.database), 10, "the worker to block")
        sweep_point.release.set()
        sweep.join(10)
        worker.join(10)

    # then the worker sees the job expired, and no credit is held
    view = result["view"]
    assert (view.status, view.changed) == ("expired", False)
    with db.unit_of_work() as session:
        assert session.scalar(select(func.count()).select_from(Hold)) == 0
    assert balances.balance(db, "member", tree.member_id).available == 1
    assert reconcile(db).ok


def test_two_allocations_with_one_key_at_once_both_succeed_once(db):
    account = directory.create_account(db, "Acme", credits=50)
    workspace = directory.create_workspace(db, account.id, "Sales")
    results = race(2, lambda i: ledger.allocate(db, "workspace", workspace.id, amount=50,
                                                key="k1"))  # fmt: skip
    assert failures(results) == []
    assert sorted(r.replayed for r in results) == [False, True]
    assert len({r.transaction_id for r in results}) == 1
    assert balances.balance(db, "workspace", workspace.id).available == 50
