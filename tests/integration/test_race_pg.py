"""Races on real PostgreSQL: many threads start together and the ledger must not budge.

Every thread waits on one barrier (``tests.helpers.race``), then calls the service; the
database's conditional UPDATEs and unique constraints, not Python, decide who wins.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from shared.db import Database
from shared.errors import HoldAlreadyResolved, InsufficientCredits
from shared.models import Hold, LedgerTransaction
from shared.services import balances, directory, holds, ledger
from shared.services.reconcile import reconcile
from tests.factories import funded_member
from tests.helpers import failures, race, successes

THREADS = 20


@pytest.fixture
def db(pg_url: str) -> Iterator[Database]:
    """A PostgreSQL database with a connection for every racing thread."""
    database = Database(pg_url, pool_size=THREADS + 2, max_overflow=0)
    try:
        yield database
    finally:
        database.dispose()


def assert_books_sound(db: Database) -> None:
    report = reconcile(db)
    assert report.ok, report.problems


def test_twenty_holds_of_5_on_12_credits_exactly_two_win(db):
    # given James with 12 credits available
    tree = funded_member(db, account_credits=50, member_credits=12)
    # when 20 jobs try to hold 5 each at the same moment
    results = race(THREADS, lambda i: holds.hold(db, f"job-{i}", tree.member_id, 5))
    # then exactly two holds succeed and the other 18 are told there is not enough
    assert len(successes(results)) == 2
    assert len(failures(results)) == 18
    assert all(isinstance(exc, InsufficientCredits) for exc in failures(results))
    wallet = balances.balance(db, "member", tree.member_id)
    assert (wallet.available, wallet.held) == (2, 10)
    with db.unit_of_work() as session:
        rows = session.scalars(select(Hold)).all()
    assert sorted(h.job_id for h in rows) == sorted(r.job_id for r in successes(results))
    assert all(h.state == "held" and h.amount == 5 for h in rows)
    assert_books_sound(db)


def test_ten_deliveries_of_one_job_hold_its_credits_once(db):
    tree = funded_member(db, account_credits=50, member_credits=12)
    # when the same job is delivered ten times at once
    results = race(10, lambda i: holds.hold(db, "job-1", tree.member_id, 5))
    # then all ten see the one hold, and only one of them made it
    assert failures(results) == []
    assert [r.replayed for r in results].count(False) == 1
    assert {(r.job_id, r.amount, r.state) for r in results} == {("job-1", 5, "held")}
    with db.unit_of_work() as session:
        assert session.scalar(select(func.count(Hold.id))) == 1
        hold_txns = session.scalar(
            select(func.count(LedgerTransaction.id)).where(LedgerTransaction.kind == "hold")
        )
    assert hold_txns == 1
    wallet = balances.balance(db, "member", tree.member_id)
    assert (wallet.available, wallet.held) == (7, 5)
    assert_books_sound(db)


def test_racing_holds_of_one_job_for_the_whole_balance_replay_the_winner(db):
    # The loser of this race finds the credits already gone to the winner's hold of the
    # same job: it must replay that hold, not report InsufficientCredits. Ten rounds,
    # because the loser can lose at the UNIQUE hold or at the balance check.
    for trial in range(10):
        tree = funded_member(db, account_credits=5, member_credits=5, name=f"M{trial}")
        # when four deliveries of one job hold exactly the member's balance at once
        results = race(4, lambda i, m=tree.member_id: holds.hold(db, "job-1", m, 5))
        # then one holds it and three replay that hold
        assert failures(results) == [], (trial, failures(results))
        assert sorted(r.replayed for r in results) == [False, True, True, True], trial
        wallet = balances.balance(db, "member", tree.member_id)
        assert (wallet.available, wallet.held) == (0, 5), trial
    assert_books_sound(db)


def test_one_job_id_held_by_two_members_at_once_is_two_holds(db):
    tree = funded_member(db, account_credits=20, member_credits=10)
    other = directory.add_member(db, tree.workspace_id, "Ben").id
    ledger.allocate(db, "workspace", tree.workspace_id, amount=10)
    ledger.allocate(db, "member", other, amount=10)
    members = [tree.member_id, other]
    # when both members hold for "job-1" at the same moment
    results = race(2, lambda i: holds.hold(db, "job-1", members[i], 5))
    # then each has a hold of their own, and neither replays the other's
    assert failures(results) == []
    assert [r.replayed for r in results] == [False, False]
    for member in members:
        wallet = balances.balance(db, "member", member)
        assert (wallet.available, wallet.held) == (5, 5)
    assert_books_sound(db)


def test_ten_racing_captures_and_releases_resolve_a_hold_exactly_once(db):
    # given one open hold of 5
    tree = funded_member(db, account_credits=50, member_credits=12)
    holds.hold(db, "job-1", tree.member_id, 5)

    # when five threads capture it and five release it, all at once
    def resolve(i: int):
        return (holds.capture if i % 2 else holds.release)(db, "job-1", tree.member_id)

    results = race(10, resolve)

    # then one resolution wins; the others replay it or are refused
    winners = [r for r in successes(results) if not r.replayed]
    assert len(winners) == 1
    outcome = winners[0].state
    assert outcome in ("captured", "released")
    for result in successes(results):
        assert result.state == outcome
    other = "released" if outcome == "captured" else "captured"
    for exc in failures(results):
        assert isinstance(exc, HoldAlreadyResolved)
        assert (exc.state, exc.wanted) == (outcome, other)
    assert len(successes(results)) == 5 and len(failures(results)) == 5

    with db.unit_of_work() as session:
        resolutions = session.scalar(
            select(func.count(LedgerTransaction.id)).where(
                LedgerTransaction.job_id == "job-1",
                LedgerTransaction.kind.in_(["capture", "release"]),
            )
        )
        state = session.scalar(select(Hold.state).where(Hold.job_id == "job-1"))
    assert (resolutions, state) == (1, outcome)
    wallet = balances.balance(db, "member", tree.member_id)
    expected = (7, 0) if outcome == "captured" else (12, 0)
    assert (wallet.available, wallet.held) == expected
    report = reconcile(db)
    assert report.ok, report.problems
    assert report.figures["spent"] == (5 if outcome == "captured" else 0)


def test_ten_topups_with_one_key_add_credits_once(db):
    account = directory.create_account(db, "Acme")
    ledger.topup(db, account.id, 10)
    # when one order is posted ten times at once
    results = race(10, lambda i: ledger.topup(db, account.id, 7, key="order-1"))
    # then it counts once and every caller sees that one transaction
    assert failures(results) == []
    assert [r.replayed for r in results].count(False) == 1
    assert len({r.transaction_id for r in results}) == 1
    assert balances.balance(db, "account", account.id).available == 17
    report = reconcile(db)
    assert report.ok, report.problems
    assert report.figures["purchased"] == 17


def test_racing_allocations_never_overdraw_the_workspace_pool(db):
    # given a workspace pool of 10 and ten members
    tree = funded_member(db, account_credits=50, workspace_credits=10)
    members = [directory.add_member(db, tree.workspace_id, f"M{i}").id for i in range(10)]
    # when each member is given 3 at the same moment
    results = race(10, lambda i: ledger.allocate(db, "member", members[i], amount=3))
    # then three allocations fit and seven are refused
    assert len(successes(results)) == 3
    assert all(isinstance(exc, InsufficientCredits) for exc in failures(results))
    assert balances.balance(db, "workspace", tree.workspace_id).available == 1
    given = sum(balances.balance(db, "member", m).available for m in members)
    assert given == 9
    assert_books_sound(db)
