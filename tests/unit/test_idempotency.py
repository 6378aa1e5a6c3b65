"""The one replay rule (``run_idempotent``): the loser of a race on a key looks once more
and replays the winner. On SQLite whole transactions are serialised, so the losing
interleavings are forced here; tests/integration/test_ledger.py races them for real on
PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from shared.errors import InsufficientCredits
from shared.models import Wallet
from shared.services import balances, holds
from shared.services.idempotency import run_idempotent
from tests.factories import funded_member, unique_violation


class Calls:
    """A ``work(session)`` that fails the first times with the given errors, then returns."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.count = 0

    def __call__(self, session) -> str:
        self.count += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def test_the_loser_of_a_unique_race_runs_its_work_once_more(db):
    work = Calls(unique_violation(db))
    assert run_idempotent(db, "uq_accounts_wallet_id", work) == "done"
    assert work.count == 2


def test_a_violation_of_another_constraint_is_raised_not_replayed(db):
    work = Calls(unique_violation(db))
    with pytest.raises(IntegrityError):
        run_idempotent(db, "uq_holds_wallet_id_job_id", work)
    assert work.count == 1


def test_a_refusal_is_looked_at_twice_when_it_may_be_a_lost_race(db):
    work = Calls(InsufficientCredits("member 1", 0, 5))
    assert run_idempotent(db, "uq_holds_wallet_id_job_id", work) == "done"
    assert work.count == 2


def test_a_refusal_of_keyless_work_is_real_and_raised_at_once(db):
    work = Calls(InsufficientCredits("member 1", 0, 5))
    with pytest.raises(InsufficientCredits):
        run_idempotent(db, "uq_holds_wallet_id_job_id", work, replay_refusals=False)
    assert work.count == 1


def test_a_real_refusal_is_raised_after_the_second_look(db):
    work = Calls(InsufficientCredits("member 1", 0, 5), InsufficientCredits("member 1", 0, 5))
    with pytest.raises(InsufficientCredits):
        run_idempotent(db, "uq_holds_wallet_id_job_id", work)
    assert work.count == 2


def test_a_hold_whose_first_look_missed_the_winner_replays_it_instead_of_refusing(db, monkeypatch):
    # given the winner's hold of job-1 took all 5 credits of the member
    tree = funded_member(db, account_credits=5, member_credits=5)
    winner = holds.hold(db, "job-1", tree.member_id, 5)
    # when the loser's first look for an earlier hold came before the winner's commit
    real_find = holds._find
    looks: list[object] = []

    def find(session, wallet_id, job_id):
        found = real_find(session, wallet_id, job_id)
        looks.append(found)
        return None if len(looks) == 1 else found

    monkeypatch.setattr(holds, "_find", find)
    replay = holds.hold(db, "job-1", tree.member_id, 5)
    # then its conditional UPDATE was refused, it looked again, and it replayed the winner
    assert len(looks) == 2
    assert replay.replayed and not winner.replayed
    assert (replay.amount, replay.state, replay.available, replay.held) == (5, "held", 0, 5)
    wallet = balances.balance(db, "member", tree.member_id)
    assert (wallet.available, wallet.held) == (0, 5)


def test_a_hold_for_another_job_that_cannot_be_paid_is_still_refused(db):
    tree = funded_member(db, account_credits=5, member_credits=5)
    holds.hold(db, "job-1", tree.member_id, 5)
    with pytest.raises(InsufficientCredits, match="0 credits available, 1 needed"):
        holds.hold(db, "job-2", tree.member_id, 1)
    with db.unit_of_work() as session:
        assert session.scalar(select(Wallet.held).where(Wallet.kind == "member")) == 5
