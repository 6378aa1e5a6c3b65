"""The unit of work (rolls back unless committed; after-commit hooks) and the recognition
of a broken UNIQUE constraint by name, which SQLite reports only by its columns."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError

from shared.db import Database
from shared.models import Account, Hold, Wallet, utcnow
from shared.services import balances, idempotency
from shared.services.idempotency import is_unique_violation
from tests.factories import funded_member, unique_violation


def new_account(session, name: str = "Acme") -> int:
    wallet_id = session.execute(
        insert(Wallet).values(kind="account", available=0, held=0).returning(Wallet.id)
    ).scalar_one()
    return session.execute(
        insert(Account).values(name=name, wallet_id=wallet_id).returning(Account.id)
    ).scalar_one()


def account_names(db: Database) -> list[str]:
    with db.unit_of_work() as session:
        return list(session.scalars(select(Account.name).order_by(Account.id)))


# ---------------------------------------------------------------- rolls back unless committed


def test_a_unit_of_work_that_is_not_committed_leaves_nothing_behind(db):
    # given a unit of work that writes but never commits
    with db.unit_of_work() as session:
        new_account(session)
        assert session.scalar(select(func.count(Account.id))) == 1  # visible inside
    # then nothing of it survives
    assert account_names(db) == []


def test_a_unit_of_work_that_raises_half_way_leaves_nothing_behind(db):
    with pytest.raises(RuntimeError), db.unit_of_work() as session:
        new_account(session)
        raise RuntimeError("crashed before commit")
    assert account_names(db) == []


def test_a_committed_unit_of_work_keeps_what_it_wrote_before_the_commit_only(db):
    with db.unit_of_work() as session:
        new_account(session, "Kept")
        session.commit()
        new_account(session, "Dropped")  # after the commit: a new transaction, never committed
    assert account_names(db) == ["Kept"]


# ---------------------------------------------------------------- after-commit hooks


def test_after_commit_hooks_run_after_the_commit_in_the_order_given(db):
    seen: list[tuple[str, list[str]]] = []
    with db.unit_of_work() as session:
        new_account(session, "Acme")
        # each hook looks from another connection: the commit must already be durable
        session.after_commit(lambda: seen.append(("first", account_names(db))))
        session.after_commit(lambda: seen.append(("second", account_names(db))))
        assert seen == []
        session.commit()
        assert seen == [("first", ["Acme"]), ("second", ["Acme"])]


def test_after_commit_hooks_never_run_when_the_unit_of_work_is_not_committed(db):
    ran: list[str] = []
    with db.unit_of_work() as session:
        new_account(session)
        session.after_commit(lambda: ran.append("announced"))
    with pytest.raises(RuntimeError), db.unit_of_work() as session:
        session.after_commit(lambda: ran.append("announced"))
        raise RuntimeError("rolled back")
    assert ran == []


def test_after_commit_hooks_of_a_rolled_back_transaction_are_dropped_not_run_later(db):
    ran: list[str] = []
    with db.unit_of_work() as session:
        session.after_commit(lambda: ran.append("stale"))
        session.rollback()
        new_account(session)
        session.after_commit(lambda: ran.append("fresh"))
        session.commit()
    assert ran == ["fresh"]


def test_each_hook_runs_once_even_when_the_session_commits_again(db):
    ran: list[str] = []
    with db.unit_of_work() as session:
        new_account(session, "One")
        session.after_commit(lambda: ran.append("one"))
        session.commit()
        new_account(session, "Two")
        session.commit()
    assert ran == ["one"]


def test_a_failing_hook_does_not_undo_the_commit(db):
    def broken() -> None:
        raise ConnectionError("the event stream is down")

    with pytest.raises(ConnectionError), db.unit_of_work() as session:
        new_account(session, "Acme")
        session.after_commit(broken)
        session.commit()
    assert account_names(db) == ["Acme"]


# ---------------------------------------------------------------- UNIQUE violations by name


def duplicate_hold(db: Database) -> IntegrityError:
    """The IntegrityError SQLite raises for a second hold of one job on one wallet."""
    tree = funded_member(db, account_credits=0)
    wallet_id = balances.balance(db, "member", tree.member_id).wallet_id
    with db.unit_of_work() as session:
        row = {"job_id": "j-1", "wallet_id": wallet_id, "amount": 1, "state": "held",
               "expires_at": utcnow()}  # fmt: skip
        session.execute(insert(Hold).values(**row))
        with pytest.raises(IntegrityError) as raised:
            session.execute(insert(Hold).values(**row))
    return raised.value


def test_a_multi_column_constraint_is_recognised_on_sqlite_from_the_model_metadata(db):
    error = duplicate_hold(db)
    assert "holds.wallet_id, holds.job_id" in str(error.orig)  # what SQLite says
    assert is_unique_violation(error, "uq_holds_wallet_id_job_id")
    assert not is_unique_violation(error, "uq_jobs_member_id_job_id")
    assert not is_unique_violation(error, "uq_ledger_transactions_idempotency_key")


def test_a_single_column_constraint_is_recognised_on_sqlite_and_not_mistaken(db):
    error = unique_violation(db)
    assert is_unique_violation(error, "uq_accounts_wallet_id")
    assert not is_unique_violation(error, "uq_workspaces_wallet_id")
    assert not is_unique_violation(error, "uq_holds_wallet_id_job_id")


def test_the_sqlite_column_names_come_from_the_models():
    columns = idempotency._sqlite_columns
    assert columns("uq_jobs_member_id_job_id") == "jobs.member_id, jobs.job_id"
    assert columns("uq_idempotent_requests_scope_key") == (
        "idempotent_requests.scope, idempotent_requests.key"
    )
    assert columns("uq_ledger_transactions_idempotency_key") == (
        "ledger_transactions.idempotency_key"
    )


def test_a_constraint_name_the_models_do_not_have_is_a_bug_not_a_silent_no(db):
    with pytest.raises(ValueError, match="no UNIQUE constraint named 'uq_nope'"):
        is_unique_violation(duplicate_hold(db), "uq_nope")


def test_postgresql_names_the_constraint_itself():
    def violation(constraint: str | None) -> IntegrityError:
        orig = SimpleNamespace(diag=SimpleNamespace(constraint_name=constraint))
        return IntegrityError("INSERT ...", {}, orig)

    assert is_unique_violation(violation("uq_holds_wallet_id_job_id"), "uq_holds_wallet_id_job_id")
    assert not is_unique_violation(violation("uq_jobs_member_id_job_id"),
                                   "uq_holds_wallet_id_job_id")  # fmt: skip
