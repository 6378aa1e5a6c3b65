"""The directory: accounts, workspaces and members, their names, roles and deactivation,
and what another account's actor may learn of them (nothing: NotFound, as for a row that
does not exist)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from shared.db import Database
from shared.errors import InvalidRequest, NotFound, PermissionDenied
from shared.models import Account, LedgerTransaction
from shared.services import balances, directory, job_reports, jobs, ledger
from shared.services.auth import Actor
from shared.services.job_reports import JobFilter
from tests.factories import Tree, accepted_job, funded_member, note


def count(db: Database, column) -> int:
    with db.unit_of_work() as session:
        return session.scalar(select(func.count(column)))


# ---------------------------------------------------------------- creating accounts


def test_an_account_and_its_first_credits_are_created_together(db):
    created = directory.create_account(db, "Acme", credits=50)
    assert balances.balance(db, "account", created.id).available == 50
    assert count(db, LedgerTransaction.id) == 1


def test_an_initial_top_up_above_the_limit_fails_and_creates_no_account(db):
    with pytest.raises(InvalidRequest, match="above the limit"):
        directory.create_account(db, "Big", credits=10**13)
    assert count(db, Account.id) == 0
    assert count(db, LedgerTransaction.id) == 0


def test_creating_an_account_again_with_its_key_replays_it_and_tops_up_once(db):
    first = directory.create_account(db, "Acme", credits=50, key="crm-acme")
    again = directory.create_account(db, "Acme", credits=50, key="crm-acme")
    assert (first.replayed, again.replayed) == (False, True)
    assert again.id == first.id
    assert count(db, Account.id) == 1
    assert balances.balance(db, "account", first.id).available == 50


# ---------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("name", "named"),
    [("Evil\x1b[31mCorp", r"U\+001B"), ("Ding\x07", r"U\+0007"), ("Zero\u200bWidth", r"U\+200B")],
    ids=["escape", "bell", "format character"],
)
def test_a_name_with_control_characters_is_refused(db, name, named):
    with pytest.raises(InvalidRequest, match=rf"must not contain control characters \({named}\)"):
        directory.create_account(db, name)
    tree = funded_member(db)
    with pytest.raises(InvalidRequest, match="member name must not contain"):
        directory.add_member(db, tree.workspace_id, name)
    with pytest.raises(InvalidRequest, match="workspace name must not contain"):
        directory.rename(db, "workspace", tree.workspace_id, name)
    assert count(db, Account.id) == 1


def test_a_name_that_looks_like_markup_is_kept_exactly(db):
    tree = funded_member(db, name="Mallory[/]")
    assert balances.balance(db, "member", tree.member_id).name == "Mallory[/]"


def test_whitespace_in_a_name_is_folded(db):
    assert directory.create_account(db, "  Acme \t Corp ").name == "Acme Corp"


# ---------------------------------------------------------------- roles and changes


def test_renaming_a_member_an_account_and_a_workspace(db):
    tree = funded_member(db)
    directory.rename(db, "member", tree.member_id, "James Lee")
    directory.rename(db, "workspace", tree.workspace_id, "Customer Success")
    directory.rename(db, "account", tree.account_id, "Acme Inc")
    found = balances.tree(db, tree.account_id)
    assert found["account"]["name"] == "Acme Inc"
    assert found["workspaces"][0]["name"] == "Customer Success"
    assert found["workspaces"][0]["members"][0]["name"] == "James Lee"


def test_an_owner_changes_roles_but_the_last_owner_stays_an_owner(db):
    tree = funded_member(db, role="owner")
    ann = directory.add_member(db, tree.workspace_id, "Ann")
    owner = Actor(tree.member_id)
    assert directory.set_role(db, ann.id, "admin", actor=owner)["was"] == "member"
    with pytest.raises(InvalidRequest, match="last owner"):
        directory.set_role(db, tree.member_id, "member", actor=owner)
    with pytest.raises(PermissionDenied):
        directory.set_role(db, tree.member_id, "member", actor=Actor(ann.id))


def test_an_admin_cannot_rename_or_deactivate_another_admin(db):
    tree = funded_member(db, role="admin")
    peer = directory.add_member(db, tree.workspace_id, "Al", role="admin")
    admin = Actor(tree.member_id)
    with pytest.raises(PermissionDenied):
        directory.rename(db, "member", peer.id, "Mallory", actor=admin)
    with pytest.raises(PermissionDenied):
        directory.deactivate(db, peer.id, actor=admin)


def test_deactivating_a_member_returns_their_credits_and_cancels_their_parked_jobs(db):
    # given James with 3 credits and a 5-credit note parked
    tree = funded_member(db, account_credits=20, member_credits=3)
    assert accepted_job(db, note("j-1", tree.member_id)).status == "awaiting_credits"
    told: list[jobs.JobView] = []
    # when he is deactivated
    result = directory.deactivate(db, tree.member_id, notify=told.append)
    # then his credits went back to the workspace and his flow engine heard of the job
    assert (result["returned"], result["jobs_cancelled"]) == (3, 1)
    assert balances.balance(db, "workspace", tree.workspace_id).available == 3
    assert [(v.job_id, v.status) for v in told] == [("j-1", "cancelled")]
    # and he can no longer act, nor be listed as active
    with pytest.raises(PermissionDenied, match="does not exist"):
        directory.require_actor(db, Actor(tree.member_id))
    assert directory.list_members(db, workspace_id=tree.workspace_id) == []
    assert directory.deactivate(db, tree.member_id)["replayed"] is True


def test_a_member_with_credits_held_by_jobs_in_flight_is_not_deactivated(db):
    tree = funded_member(db, account_credits=20, member_credits=10)
    assert accepted_job(db, note("j-1", tree.member_id)).status == "submitted"
    with pytest.raises(InvalidRequest, match="5 credits held by jobs in flight"):
        directory.deactivate(db, tree.member_id)
    assert balances.balance(db, "member", tree.member_id).available == 5


def test_an_acting_member_must_exist(db):
    with pytest.raises(PermissionDenied, match="acting member 999 does not exist"):
        directory.require_actor(db, Actor(999))


# ---------------------------------------------------------------- other accounts do not exist


@pytest.fixture
def strangers(db: Database) -> tuple[Tree, Actor]:
    """Acme's member James (with a job), and Eve, an owner of another account."""
    acme = funded_member(db, account_credits=20, member_credits=10)
    accepted_job(db, note("j-1", acme.member_id))
    eve = funded_member(db, account_credits=20, role="owner", name="Eve")
    return acme, Actor(eve.member_id)


def message(call) -> str:
    with pytest.raises(NotFound) as raised:
        call()
    return str(raised.value)


@pytest.mark.parametrize(
    ("kind", "read"),
    [
        ("member", lambda db, key, eve: balances.balance(db, "member", key, actor=eve)),
        ("workspace", lambda db, key, eve: balances.balance(db, "workspace", key, actor=eve)),
        ("account", lambda db, key, eve: balances.tree(db, key, actor=eve)),
        ("account", lambda db, key, eve: directory.list_workspaces(db, key, actor=eve)),
        ("member", lambda db, key, eve: balances.history(db, "member", key, actor=eve)),
        ("member", lambda db, key, eve: ledger.allocate(db, "member", key, amount=1, actor=eve)),
        ("workspace", lambda db, key, eve: directory.add_member(db, key, "Spy", actor=eve)),
        ("member", lambda db, key, eve: directory.rename(db, "member", key, "X", actor=eve)),
        ("member", lambda db, key, eve: job_reports.list_jobs(db, JobFilter(member_id=key),
                                                              actor=eve)),
    ],
)  # fmt: skip
def test_another_accounts_row_is_not_found_exactly_like_a_missing_one(db, strangers, kind, read):
    acme, eve = strangers
    key = {"member": acme.member_id, "workspace": acme.workspace_id,
           "account": acme.account_id}[kind]  # fmt: skip
    hidden = message(lambda: read(db, key, eve))
    missing = message(lambda: read(db, 999_999, eve))
    assert hidden == missing.replace("999999", str(key))
    assert hidden == f"{kind} {key} does not exist"


def test_another_accounts_job_is_not_found_exactly_like_a_missing_one(db, strangers):
    acme, eve = strangers
    hidden = message(lambda: job_reports.job_report(db, "j-1", member_id=acme.member_id,
                                                    actor=eve))  # fmt: skip
    missing = message(lambda: job_reports.job_report(db, "j-404", actor=eve))
    assert hidden == missing.replace("j-404", "j-1")
    assert message(lambda: jobs.cancel(db, acme.member_id, "j-1", actor=eve)) == hidden


def test_support_sees_every_account(db, strangers):
    acme, _eve = strangers
    assert job_reports.job_report(db, "j-1").job.member_id == acme.member_id
    assert len(directory.list_accounts(db)) == 2


def test_a_member_lists_only_their_own_account(db, strangers):
    _acme, eve = strangers
    (own,) = directory.list_accounts(db, actor=eve)
    assert own["name"] == "Acme"
    assert job_reports.list_jobs(db, JobFilter(), actor=eve)["jobs"] == []
