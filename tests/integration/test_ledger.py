"""Ledger services (transfers, holds, reads, reconcile), each case on SQLite and on
PostgreSQL through the ``ledger_db`` fixture; PostgreSQL-only races are marked as such.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select, text

from shared.db import Database
from shared.errors import (
    HoldAlreadyResolved,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidRequest,
    NotFound,
    PermissionDenied,
)
from shared.models import Hold, LedgerTransaction
from shared.services import balances, directory, holds, job_reports, jobs, ledger
from shared.services.auth import PIPELINE, SUPPORT, Actor
from shared.services.reconcile import reconcile
from tests.factories import accepted_job, funded_member, note
from tests.helpers import failures, interleave, race, successes


@pytest.fixture
def db(ledger_db: Database) -> Database:
    """Every case of this module runs twice: on SQLite, then on PostgreSQL."""
    return ledger_db


def transaction_count(db: Database) -> int:
    with db.unit_of_work() as session:
        return session.scalar(select(func.count(LedgerTransaction.id)))


def available(db: Database, kind: str, owner_id: int) -> int:
    return balances.balance(db, kind, owner_id).available


def member_wallet(db: Database, member_id: int) -> tuple[int, int]:
    found = balances.balance(db, "member", member_id)
    return found.available, found.held


# ---------------------------------------------------------------- transfers


def test_worked_example_account_50_workspace_5_james_5(db):
    # given an account with 50 credits
    account = directory.create_account(db, "Acme")
    ledger.topup(db, account.id, 50)
    workspace = directory.create_workspace(db, account.id, "Sales")
    james = directory.add_member(db, workspace.id, "James")
    # when 10 go to the workspace and 5 of those to James
    ledger.allocate(db, "workspace", workspace.id, amount=10)
    ledger.allocate(db, "member", james.id, amount=5)
    # then the pools read 40 / 5 / 5 and the totals add up
    tree = balances.tree(db, account.id)
    assert tree["account"]["available"] == 40
    assert tree["workspaces"][0]["available"] == 5
    assert tree["workspaces"][0]["members"][0]["available"] == 5
    assert tree["totals"]["total"] == 50
    assert reconcile(db).ok


def test_topup_with_same_key_replays_and_changes_nothing(db):
    account = directory.create_account(db, "Acme")
    first = ledger.topup(db, account.id, 30, key="order-1")
    again = ledger.topup(db, account.id, 30, key="order-1")
    assert again.replayed and not first.replayed
    assert again.transaction_id == first.transaction_id
    # the replay shows what the first run showed: the account's pool, no system wallet
    assert again.available_after == first.available_after == {account.wallet_id: 30}
    assert available(db, "account", account.id) == 30


def test_topup_with_same_key_and_other_amount_is_a_conflict(db):
    account = directory.create_account(db, "Acme")
    ledger.topup(db, account.id, 30, key="order-1")
    with pytest.raises(IdempotencyConflict, match="order-1"):
        ledger.topup(db, account.id, 31, key="order-1")
    assert available(db, "account", account.id) == 30


def test_same_key_on_topup_and_allocate_does_not_collide(db):
    tree = funded_member(db, account_credits=10)
    ledger.topup(db, tree.account_id, 5, key="k")
    moved = ledger.allocate(db, "workspace", tree.workspace_id, amount=5, key="k")
    assert not moved.replayed


def test_two_accounts_can_both_use_the_same_idempotency_key(db):
    # given two customers, each with an order numbered "q3-bonus" in their own CRM
    acme = funded_member(db, account_credits=0)
    globex = funded_member(db, account_credits=0, name="Gil")
    # when support tops both up under that key
    first = ledger.topup(db, acme.account_id, 10, key="q3-bonus")
    second = ledger.topup(db, globex.account_id, 20, key="q3-bonus")
    moved_a = ledger.allocate(db, "workspace", acme.workspace_id, amount=4, key="q3-bonus")
    moved_g = ledger.allocate(db, "workspace", globex.workspace_id, amount=7, key="q3-bonus")
    # then each account got its own credits: nothing was replayed across accounts
    assert not any(t.replayed for t in (first, second, moved_a, moved_g))
    assert first.transaction_id != second.transaction_id
    assert available(db, "account", acme.account_id) == 6
    assert available(db, "account", globex.account_id) == 13
    # and within one account the key still replays
    assert ledger.topup(db, globex.account_id, 20, key="q3-bonus").replayed


@pytest.mark.parametrize("amount", [0, -1, 1.5, "3", True, 10**13])
def test_topup_rejects_amounts_that_are_not_positive_whole_credits(db, amount):
    account = directory.create_account(db, "Acme")
    with pytest.raises(InvalidRequest, match="amount"):
        ledger.topup(db, account.id, amount)


def test_allocation_cannot_overdraw_the_parent_pool(db):
    tree = funded_member(db, account_credits=10)
    with pytest.raises(InsufficientCredits, match="has 10 credits available, 11 needed"):
        ledger.allocate(db, "workspace", tree.workspace_id, amount=11)
    assert available(db, "account", tree.account_id) == 10


def test_negative_amount_reclaims_to_the_parent(db):
    tree = funded_member(db, account_credits=20, member_credits=8)
    moved = ledger.allocate(db, "member", tree.member_id, amount=-3)
    assert moved.kind == "reclaim" and moved.amount == 3
    assert available(db, "member", tree.member_id) == 5
    assert available(db, "workspace", tree.workspace_id) == 3


def test_set_moves_the_difference_either_way(db):
    tree = funded_member(db, account_credits=20)
    up = ledger.allocate(db, "workspace", tree.workspace_id, set_to=12)
    down = ledger.allocate(db, "workspace", tree.workspace_id, set_to=4)
    assert (up.kind, up.amount, down.kind, down.amount) == ("allocate", 12, "reclaim", 8)
    assert available(db, "account", tree.account_id) == 16


def test_set_to_the_current_balance_writes_no_transaction(db):
    # given a member holding 8
    tree = funded_member(db, account_credits=20, member_credits=8)
    before = transaction_count(db)
    # when a manager sets the balance to 8
    moved = ledger.allocate(db, "member", tree.member_id, set_to=8)
    # then nothing moved and nothing was written
    assert (moved.transaction_id, moved.amount, moved.replayed) == (None, 0, False)
    assert transaction_count(db) == before
    assert available(db, "member", tree.member_id) == 8


def test_a_keyed_set_that_moves_nothing_still_records_its_key(db):
    # given a member at 8, set to 8 under key ui-1 (nothing to move)
    tree = funded_member(db, account_credits=20, workspace_credits=5, member_credits=8)
    ledger.allocate(db, "member", tree.member_id, set_to=8, key="ui-1")
    # when the balance changes and the same request is retried
    ledger.allocate(db, "member", tree.member_id, amount=3)
    again = ledger.allocate(db, "member", tree.member_id, set_to=8, key="ui-1")
    # then the retry replays "nothing moved" instead of reclaiming 3
    assert again.replayed
    assert available(db, "member", tree.member_id) == 11
    # and the key cannot be used for another request
    with pytest.raises(IdempotencyConflict):
        ledger.allocate(db, "workspace", tree.workspace_id, amount=1, key="ui-1")


def test_set_with_key_replays_even_after_the_balance_changed(db):
    tree = funded_member(db, account_credits=20)
    first = ledger.allocate(db, "workspace", tree.workspace_id, set_to=12, key="ui-1")
    ledger.allocate(db, "workspace", tree.workspace_id, amount=3)
    again = ledger.allocate(db, "workspace", tree.workspace_id, set_to=12, key="ui-1")
    assert again.replayed and again.transaction_id == first.transaction_id
    assert available(db, "workspace", tree.workspace_id) == 15


def test_reclaim_never_takes_held_credits(db):
    tree = funded_member(db, account_credits=20, member_credits=5)
    holds.hold(db, "job-1", tree.member_id, 4)
    with pytest.raises(InsufficientCredits):
        ledger.allocate(db, "member", tree.member_id, amount=-2)
    moved = ledger.allocate(db, "member", tree.member_id, set_to=0)
    assert moved.amount == 1
    assert member_wallet(db, tree.member_id) == (0, 4)


def test_a_member_with_parked_jobs_is_announced_after_the_allocation_commits(db):
    # given a member whose note is parked for want of credits
    tree = funded_member(db, account_credits=20, workspace_credits=10)
    assert accepted_job(db, note("j-1", tree.member_id)).status == "awaiting_credits"
    funded: list[tuple[int, int]] = []

    def on_member_funded(member_id: int) -> None:
        # runs after the commit: the credits are already visible to anyone who looks
        funded.append((member_id, available(db, "member", member_id)))

    # when credits reach them, and then their workspace (no member there)
    ledger.allocate(db, "member", tree.member_id, amount=6, on_member_funded=on_member_funded)
    ledger.allocate(db, "workspace", tree.workspace_id, amount=1, on_member_funded=on_member_funded)
    with pytest.raises(InsufficientCredits):
        ledger.allocate(db, "member", tree.member_id, amount=99, on_member_funded=on_member_funded)
    # then the member was announced once, with the credits already there
    assert funded == [(tree.member_id, 6)]


@pytest.mark.parametrize("how", [{"amount": 3}, {"set_to": 3}])
def test_a_deactivated_member_is_given_no_credits_and_the_tree_still_adds_up(db, how):
    # given James, deactivated with his 4 credits returned to the workspace
    tree = funded_member(db, account_credits=20, workspace_credits=6, member_credits=4)
    directory.deactivate(db, tree.member_id)
    # when a manager gives him credits anyway
    with pytest.raises(InvalidRequest, match="deactivated"):
        ledger.allocate(db, "member", tree.member_id, **how)
    # then nothing moved, and every credit of the account still shows in its tree
    assert available(db, "workspace", tree.workspace_id) == 10
    assert balances.tree(db, tree.account_id)["totals"]["total"] == 20


# ---------------------------------------------------------------- who may move credits


def test_members_read_only_their_own_wallet(db):
    tree = funded_member(db, account_credits=20, member_credits=3)
    other = directory.add_member(db, tree.workspace_id, "Ann")
    me = Actor(tree.member_id)
    assert balances.balance(db, "member", tree.member_id, actor=me).available == 3
    for kind, owner in (("member", other.id), ("workspace", tree.workspace_id)):
        with pytest.raises(PermissionDenied):
            balances.balance(db, kind, owner, actor=me)
    with pytest.raises(PermissionDenied):
        balances.tree(db, tree.account_id, actor=me)


def test_only_support_tops_up(db):
    tree = funded_member(db, role="owner")
    with pytest.raises(PermissionDenied, match="only support"):
        ledger.topup(db, tree.account_id, 5, actor=Actor(tree.member_id))


def test_workspace_admin_allocates_to_own_members_but_not_other_workspaces(db):
    tree = funded_member(db, account_credits=30, workspace_credits=10, role="admin")
    admin = Actor(tree.member_id)
    peer = directory.add_member(db, tree.workspace_id, "Ann")
    ledger.allocate(db, "member", peer.id, amount=4, actor=admin)
    other_ws = directory.create_workspace(db, tree.account_id, "Support")
    stranger = directory.add_member(db, other_ws.id, "Bo")
    with pytest.raises(PermissionDenied):
        ledger.allocate(db, "member", stranger.id, amount=1, actor=admin)
    with pytest.raises(PermissionDenied):
        ledger.allocate(db, "workspace", other_ws.id, amount=1, actor=admin)
    assert available(db, "member", stranger.id) == 0


@pytest.mark.parametrize("role", ["owner", "admin"])
@pytest.mark.parametrize("how", [{"amount": -1}, {"set_to": 0}])
def test_an_admin_cannot_reclaim_from_an_owner_or_another_admin(db, role, how):
    # given an admin and, in the same workspace, an owner or another admin with 5 credits
    tree = funded_member(db, account_credits=30, workspace_credits=5, role="admin")
    boss = directory.add_member(db, tree.workspace_id, "Bea", role=role)
    ledger.allocate(db, "member", boss.id, amount=5)
    # when the admin takes credits back from them
    with pytest.raises(PermissionDenied, match=f"who is an {role}"):
        ledger.allocate(db, "member", boss.id, actor=Actor(tree.member_id), **how)
    # then nothing moved
    assert available(db, "member", boss.id) == 5


def test_an_admin_may_still_give_to_an_owner_and_reclaim_from_members_and_self(db):
    tree = funded_member(db, account_credits=30, workspace_credits=10, member_credits=4,
                         role="admin")  # fmt: skip
    admin = Actor(tree.member_id)
    owner = directory.add_member(db, tree.workspace_id, "Bea", role="owner")
    plain = directory.add_member(db, tree.workspace_id, "Cy")
    ledger.allocate(db, "member", owner.id, amount=2, actor=admin)
    ledger.allocate(db, "member", plain.id, amount=3, actor=admin)
    ledger.allocate(db, "member", plain.id, amount=-3, actor=admin)
    ledger.allocate(db, "member", tree.member_id, set_to=1, actor=admin)
    assert [available(db, "member", m) for m in (owner.id, plain.id, tree.member_id)] == [2, 0, 1]


def test_an_owner_reclaims_from_an_admin(db):
    tree = funded_member(db, account_credits=30, workspace_credits=5, role="owner")
    admin = directory.add_member(db, tree.workspace_id, "Al", role="admin")
    ledger.allocate(db, "member", admin.id, amount=5)
    ledger.allocate(db, "member", admin.id, amount=-5, actor=Actor(tree.member_id))
    assert available(db, "member", admin.id) == 0


def test_account_owner_allocates_to_every_workspace_of_the_account(db):
    tree = funded_member(db, account_credits=30, role="owner")
    other_ws = directory.create_workspace(db, tree.account_id, "Support")
    ledger.allocate(db, "workspace", other_ws.id, amount=7, actor=Actor(tree.member_id))
    assert available(db, "workspace", other_ws.id) == 7


def test_plain_member_cannot_allocate_even_to_self(db):
    tree = funded_member(db, account_credits=30, workspace_credits=10)
    with pytest.raises(PermissionDenied):
        ledger.allocate(db, "member", tree.member_id, amount=1, actor=Actor(tree.member_id))
    assert available(db, "workspace", tree.workspace_id) == 10


def test_a_replayed_key_tells_nothing_to_someone_not_allowed_to_make_the_request(db):
    tree = funded_member(db, account_credits=20)
    ledger.topup(db, tree.account_id, 5, key="order-7")
    stranger = funded_member(db, account_credits=0, role="owner", name="Eve")
    with pytest.raises(PermissionDenied):
        ledger.topup(db, tree.account_id, 5, key="order-7", actor=Actor(stranger.member_id))


# ---------------------------------------------------------------- holds


def test_hold_capture_moves_credits_to_spent_exactly_once(db):
    tree = funded_member(db, account_credits=20, member_credits=10)
    held = holds.hold(db, "job-1", tree.member_id, 5)
    assert (held.available, held.held, held.state) == (5, 5, "held")
    captured = holds.capture(db, "job-1", tree.member_id)
    replay = holds.capture(db, "job-1", tree.member_id)
    assert captured.state == "captured" and not captured.replayed
    assert replay.replayed and replay.held == 0 and replay.available == 5
    report = reconcile(db)
    assert report.ok and report.figures["spent"] == 5


def test_release_returns_the_hold_to_available(db):
    tree = funded_member(db, account_credits=20, member_credits=10)
    holds.hold(db, "job-1", tree.member_id, 5)
    released = holds.release(db, "job-1", tree.member_id)
    assert (released.available, released.held) == (10, 0)
    assert holds.release(db, "job-1", tree.member_id).replayed


def test_capturing_a_released_hold_is_refused_and_the_reverse_too(db):
    tree = funded_member(db, account_credits=20, member_credits=10)
    member = tree.member_id
    holds.hold(db, "a", member, 2)
    holds.hold(db, "b", member, 2)
    holds.release(db, "a", member)
    holds.capture(db, "b", member)
    with pytest.raises(HoldAlreadyResolved, match="already released"):
        holds.capture(db, "a", member)
    with pytest.raises(HoldAlreadyResolved, match="already captured"):
        holds.release(db, "b", member)
    assert reconcile(db).ok


def test_hold_replays_for_same_job_and_conflicts_for_other_amount(db):
    tree = funded_member(db, account_credits=20, member_credits=10)
    holds.hold(db, "job-1", tree.member_id, 5)
    assert holds.hold(db, "job-1", tree.member_id, 5).replayed
    with pytest.raises(IdempotencyConflict, match="job-1"):
        holds.hold(db, "job-1", tree.member_id, 6)
    assert member_wallet(db, tree.member_id) == (5, 5)


def test_one_job_id_held_by_two_members_is_two_holds(db):
    tree = funded_member(db, account_credits=20, member_credits=10)
    other = directory.add_member(db, tree.workspace_id, "Ann")
    ledger.allocate(db, "workspace", tree.workspace_id, amount=6)
    ledger.allocate(db, "member", other.id, amount=6)
    first = holds.hold(db, "flow-1:step-2", tree.member_id, 5)
    second = holds.hold(db, "flow-1:step-2", other.id, 6)
    assert not first.replayed and not second.replayed
    assert member_wallet(db, tree.member_id) == (5, 5)
    assert member_wallet(db, other.id) == (0, 6)
    holds.capture(db, "flow-1:step-2", other.id)
    assert holds.release(db, "flow-1:step-2", tree.member_id).available == 10


def test_hold_beyond_available_changes_nothing(db):
    tree = funded_member(db, account_credits=20, member_credits=4)
    with pytest.raises(InsufficientCredits, match="4 credits available, 5 needed"):
        holds.hold(db, "job-1", tree.member_id, 5)
    with pytest.raises(NotFound):
        holds.capture(db, "job-1", tree.member_id)
    assert member_wallet(db, tree.member_id) == (4, 0)


@pytest.mark.parametrize("actor", [SUPPORT, "owner"], ids=["support", "owner"])
def test_only_the_pipeline_may_hold_capture_or_release_credits(db, actor):
    tree = funded_member(db, account_credits=20, member_credits=10, role="owner")
    holds.hold(db, "job-1", tree.member_id, 5)
    actor = Actor(tree.member_id) if actor == "owner" else actor
    with pytest.raises(PermissionDenied, match="only the send pipeline may"):
        holds.release(db, "job-1", tree.member_id, actor=actor)
    with pytest.raises(PermissionDenied, match="only the send pipeline may"):
        holds.capture(db, "job-1", tree.member_id, actor=actor)
    with pytest.raises(PermissionDenied, match="only the send pipeline may"):
        holds.hold(db, "job-2", tree.member_id, 1, actor=actor)
    assert member_wallet(db, tree.member_id) == (5, 5)
    assert holds.release(db, "job-1", tree.member_id, actor=PIPELINE).available == 10


def test_several_callers_holding_one_job_at_once_hold_it_once_and_the_rest_replay(db):
    # given a member who can pay for the job exactly once
    tree = funded_member(db, account_credits=20, member_credits=5)
    # when four deliveries hold the same job at once
    results = race(4, lambda _: holds.hold(db, "job-1", tree.member_id, 5))
    # then one took the hold and the others replayed it; nobody was refused
    assert failures(results) == []
    assert sorted(r.replayed for r in successes(results)) == [False, True, True, True]
    assert member_wallet(db, tree.member_id) == (0, 5)
    with db.unit_of_work() as session:
        assert session.scalar(select(func.count(Hold.id))) == 1
    assert reconcile(db).ok


def test_a_hold_that_lost_the_race_to_its_own_job_replays_the_winner_on_postgres(
    pg_db, monkeypatch
):
    """The loser looks for an earlier hold before the winner commits, then finds the
    credits gone (its conditional UPDATE waited for the winner's row): InsufficientCredits,
    although the credits went to its own job. It must look again and replay the winner.
    SQLite serialises whole transactions, so this interleaving exists on PostgreSQL only.
    """
    # given a member with exactly one job's worth of credits
    tree = funded_member(pg_db, account_credits=5, member_credits=5)
    refused: list[InsufficientCredits] = []
    real_post = holds.post

    def post(*args, **kwargs):
        try:
            return real_post(*args, **kwargs)
        except InsufficientCredits as exc:
            refused.append(exc)
            raise

    monkeypatch.setattr(holds, "post", post)
    # when the loser has looked for an earlier hold (none yet) and waits there
    with interleave(holds, "_find") as point, ThreadPoolExecutor(1) as pool:
        loser = pool.submit(holds.hold, pg_db, "job-1", tree.member_id, 5)
        assert point.reached.wait(10)
        # while the winner holds the same job and commits
        winner = holds.hold(pg_db, "job-1", tree.member_id, 5)
        point.release.set()
        replay = loser.result(10)
    # then the loser was refused once, looked again, and replayed the winner's hold
    assert len(refused) == 1
    assert not winner.replayed
    assert replay.replayed and (replay.amount, replay.state) == (5, "held")
    assert member_wallet(pg_db, tree.member_id) == (0, 5)
    assert reconcile(pg_db).ok


# ---------------------------------------------------------------- jobs on the ledger


def test_a_vendor_refusal_longer_than_a_thousand_characters_is_refunded(db):
    # given a note that holds its 5 credits
    tree = funded_member(db, account_credits=20, member_credits=10)
    view = accepted_job(db, note("j-1", tree.member_id))
    assert view.status == "submitted"
    # when the vendor refuses it with a very long explanation
    reason = "print-house refused: " + "address undeliverable; " * 100
    assert len(reason) > jobs.MAX_ERROR_LEN
    done = jobs.refund(db, view.pk, reason=reason)
    # then the job is refunded, its recorded reason cut to the column's size
    assert done.status == "refunded"
    found = job_reports.job_report(db, "j-1")
    assert found.history[-1]["to"] == "refunded"
    assert found.history[-1]["detail"] == reason[: jobs.MAX_ERROR_LEN]
    assert found.job.detail == reason[: jobs.MAX_ERROR_LEN]
    assert found.hold["state"] == "released"
    assert member_wallet(db, tree.member_id) == (10, 0)
    assert reconcile(db).ok


def test_history_says_who_made_each_entry(db):
    # given an owner who funds a member whose job then holds and captures credits
    tree = funded_member(db, account_credits=30, workspace_credits=10, role="owner", name="Ava")
    james = directory.add_member(db, tree.workspace_id, "James")
    ledger.allocate(db, "member", james.id, amount=8, actor=Actor(tree.member_id))
    view = accepted_job(db, note("j-1", james.id))
    jobs.complete(db, view.pk, vendor_ref="PH-1")
    # when anyone reads James's history
    page = balances.history(db, "member", james.id)
    # then each entry says who made it, in words
    by_kind = {(e["kind"], e["by"]) for e in page["entries"]}
    assert by_kind == {
        ("allocate", f"Ava (member {tree.member_id})"),
        ("hold", "pipeline for job j-1"),
        ("capture", "pipeline for job j-1"),
    }
    account_page = balances.history(db, "account", tree.account_id)
    assert {e["by"] for e in account_page["entries"] if e["kind"] == "topup"} == {"support"}


def test_history_pages_newest_first_with_running_balance(db):
    tree = funded_member(db, account_credits=30, member_credits=10)
    for i in range(3):
        holds.hold(db, f"job-{i}", tree.member_id, 1)
    page = balances.history(db, "member", tree.member_id, limit=4)
    assert [e["kind"] for e in page["entries"]] == ["hold", "hold", "hold", "hold"]
    assert page["entries"][0]["balance_after"] in (7, 3)
    rest = balances.history(db, "member", tree.member_id, limit=4, before=page["next_before"])
    assert [e["kind"] for e in rest["entries"]][-1] == "allocate"
    assert rest["next_before"] is None
    ids = [e["entry_id"] for e in page["entries"] + rest["entries"]]
    assert ids == sorted(ids, reverse=True) and len(ids) == 7


# ---------------------------------------------------------------- reconcile


def test_reconcile_names_the_wallet_whose_balance_drifted(db):
    tree = funded_member(db, account_credits=30, member_credits=10)
    wallet_id = balances.balance(db, "member", tree.member_id).wallet_id
    with db.unit_of_work() as session:  # a bug that changes a balance behind the ledger
        session.execute(
            text("UPDATE wallets SET available = available + 1 WHERE id = :id"), {"id": wallet_id}
        )
        session.commit()
    report = reconcile(db)
    assert not report.ok
    assert any(
        p.wallet_id == wallet_id and p.invariant == "balance_equals_entries"
        for p in report.problems
    )


def test_reconcile_flags_a_hold_left_open_on_a_finished_job(db):
    tree = funded_member(db, account_credits=10, member_credits=10)
    payload = {"job_id": "j-open", "member_id": tree.member_id, "action": "accept_lead",
               "lead_id": "l"}  # fmt: skip
    assert accepted_job(db, payload).status == "submitted"
    assert reconcile(db).ok
    with db.unit_of_work() as session:  # a bug that finishes a job without its hold
        session.execute(text("UPDATE jobs SET status = 'expired' WHERE job_id = 'j-open'"))
        session.commit()
    report = reconcile(db)
    assert [p.invariant for p in report.problems] == ["no_open_hold_on_final_job"]
