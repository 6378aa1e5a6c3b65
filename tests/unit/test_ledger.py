"""Ledger services. The same tests run on PostgreSQL from tests/integration/test_ledger_pg.py."""

from __future__ import annotations

import pytest

from shared.errors import (
    HoldAlreadyResolved,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidRequest,
    NotFound,
    PermissionDenied,
)
from shared.services import balances, directory, ledger
from shared.services.auth import Actor
from shared.services.reconcile import reconcile
from tests.factories import funded_member


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
    assert balances.balance(db, "account", account.id).available == 30


def test_topup_with_same_key_and_other_amount_is_a_conflict(db):
    account = directory.create_account(db, "Acme")
    ledger.topup(db, account.id, 30, key="order-1")
    with pytest.raises(IdempotencyConflict, match="order-1"):
        ledger.topup(db, account.id, 31, key="order-1")
    assert balances.balance(db, "account", account.id).available == 30


def test_same_key_on_topup_and_allocate_does_not_collide(db):
    tree = funded_member(db, account_credits=10)
    ledger.topup(db, tree.account_id, 5, key="k")
    moved = ledger.allocate(db, "workspace", tree.workspace_id, amount=5, key="k")
    assert not moved.replayed


@pytest.mark.parametrize("amount", [0, -1, 1.5, "3", True, 10**13])
def test_topup_rejects_amounts_that_are_not_positive_whole_credits(db, amount):
    account = directory.create_account(db, "Acme")
    with pytest.raises(InvalidRequest, match="amount"):
        ledger.topup(db, account.id, amount)


def test_allocation_cannot_overdraw_the_parent_pool(db):
    tree = funded_member(db, account_credits=10)
    with pytest.raises(InsufficientCredits, match="has 10 credits available, 11 needed"):
        ledger.allocate(db, "workspace", tree.workspace_id, amount=11)
    assert balances.balance(db, "account", tree.account_id).available == 10


def test_negative_amount_reclaims_to_the_parent(db):
    tree = funded_member(db, account_credits=20, member_credits=8)
    moved = ledger.allocate(db, "member", tree.member_id, amount=-3)
    assert moved.kind == "reclaim" and moved.amount == 3
    assert balances.balance(db, "member", tree.member_id).available == 5
    assert balances.balance(db, "workspace", tree.workspace_id).available == 3


def test_set_moves_the_difference_either_way(db):
    tree = funded_member(db, account_credits=20)
    up = ledger.allocate(db, "workspace", tree.workspace_id, set_to=12)
    down = ledger.allocate(db, "workspace", tree.workspace_id, set_to=4)
    assert (up.kind, up.amount, down.kind, down.amount) == ("allocate", 12, "reclaim", 8)
    assert balances.balance(db, "account", tree.account_id).available == 16


def test_set_with_key_replays_even_after_the_balance_changed(db):
    tree = funded_member(db, account_credits=20)
    first = ledger.allocate(db, "workspace", tree.workspace_id, set_to=12, key="ui-1")
    ledger.allocate(db, "workspace", tree.workspace_id, amount=3)
    again = ledger.allocate(db, "workspace", tree.workspace_id, set_to=12, key="ui-1")
    assert again.replayed and again.transaction_id == first.transaction_id
    assert balances.balance(db, "workspace", tree.workspace_id).available == 15


def test_reclaim_never_takes_held_credits(db):
    tree = funded_member(db, account_credits=20, member_credits=5)
    ledger.hold(db, "job-1", tree.member_id, 4)
    with pytest.raises(InsufficientCredits):
        ledger.allocate(db, "member", tree.member_id, amount=-2)
    moved = ledger.allocate(db, "member", tree.member_id, set_to=0)
    assert moved.amount == 1
    assert balances.balance(db, "member", tree.member_id).held == 4


def test_hold_capture_moves_credits_to_spent_exactly_once(db):
    tree = funded_member(db, account_credits=20, member_credits=10)
    held = ledger.hold(db, "job-1", tree.member_id, 5)
    assert (held.available, held.held, held.state) == (5, 5, "held")
    captured = ledger.capture(db, "job-1")
    replay = ledger.capture(db, "job-1")
    assert captured.state == "captured" and not captured.replayed
    assert replay.replayed and replay.held == 0 and replay.available == 5
    report = reconcile(db)
    assert report.ok and report.figures["spent"] == 5


def test_release_returns_the_hold_to_available(db):
    tree = funded_member(db, account_credits=20, member_credits=10)
    ledger.hold(db, "job-1", tree.member_id, 5)
    released = ledger.release(db, "job-1")
    assert (released.available, released.held) == (10, 0)
    assert ledger.release(db, "job-1").replayed


def test_capturing_a_released_hold_is_refused_and_the_reverse_too(db):
    tree = funded_member(db, account_credits=20, member_credits=10)
    ledger.hold(db, "a", tree.member_id, 2)
    ledger.hold(db, "b", tree.member_id, 2)
    ledger.release(db, "a")
    ledger.capture(db, "b")
    with pytest.raises(HoldAlreadyResolved, match="already released"):
        ledger.capture(db, "a")
    with pytest.raises(HoldAlreadyResolved, match="already captured"):
        ledger.release(db, "b")
    assert reconcile(db).ok


def test_hold_replays_for_same_job_and_conflicts_for_other_amount(db):
    tree = funded_member(db, account_credits=20, member_credits=10)
    ledger.hold(db, "job-1", tree.member_id, 5)
    assert ledger.hold(db, "job-1", tree.member_id, 5).replayed
    with pytest.raises(IdempotencyConflict, match="job-1"):
        ledger.hold(db, "job-1", tree.member_id, 6)
    assert balances.balance(db, "member", tree.member_id).held == 5


def test_hold_beyond_available_changes_nothing(db):
    tree = funded_member(db, account_credits=20, member_credits=4)
    with pytest.raises(InsufficientCredits, match="4 credits available, 5 needed"):
        ledger.hold(db, "job-1", tree.member_id, 5)
    with pytest.raises(NotFound):
        ledger.capture(db, "job-1")
    assert balances.balance(db, "member", tree.member_id).available == 4


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
    assert balances.balance(db, "member", stranger.id).available == 0


def test_account_owner_allocates_to_every_workspace_of_the_account(db):
    tree = funded_member(db, account_credits=30, role="owner")
    other_ws = directory.create_workspace(db, tree.account_id, "Support")
    ledger.allocate(db, "workspace", other_ws.id, amount=7, actor=Actor(tree.member_id))
    assert balances.balance(db, "workspace", other_ws.id).available == 7


def test_plain_member_cannot_allocate_even_to_self(db):
    tree = funded_member(db, account_credits=30, workspace_credits=10)
    with pytest.raises(PermissionDenied):
        ledger.allocate(db, "member", tree.member_id, amount=1, actor=Actor(tree.member_id))
    assert balances.balance(db, "workspace", tree.workspace_id).available == 10


def test_history_pages_newest_first_with_running_balance(db):
    tree = funded_member(db, account_credits=30, member_credits=10)
    for i in range(3):
        ledger.hold(db, f"job-{i}", tree.member_id, 1)
    page = balances.history(db, "member", tree.member_id, limit=4)
    assert [e["kind"] for e in page["entries"]] == ["hold", "hold", "hold", "hold"]
    assert page["entries"][0]["balance_after"] in (7, 3)
    rest = balances.history(db, "member", tree.member_id, limit=4, before=page["next_before"])
    assert [e["kind"] for e in rest["entries"]][-1] == "allocate"
    assert rest["next_before"] is None
    ids = [e["entry_id"] for e in page["entries"] + rest["entries"]]
    assert ids == sorted(ids, reverse=True) and len(ids) == 7


def test_reconcile_names_the_wallet_whose_balance_drifted(db):
    from sqlalchemy import text

    tree = funded_member(db, account_credits=30, member_credits=10)
    member_wallet = balances.balance(db, "member", tree.member_id).wallet_id
    with db.unit_of_work() as session:
        session.execute(
            text("UPDATE wallets SET available = available + 1 WHERE id = :id"),
            {"id": member_wallet},
        )
    report = reconcile(db)
    assert not report.ok
    assert any(
        p.wallet_id == member_wallet and p.invariant == "balance_equals_entries"
        for p in report.problems
    )


def test_members_cannot_hold_capture_or_release_credits_themselves(db):
    tree = funded_member(db, account_credits=20, member_credits=10, role="admin")
    ledger.hold(db, "job-1", tree.member_id, 5)
    me = Actor(tree.member_id)
    with pytest.raises(PermissionDenied):
        ledger.release(db, "job-1", actor=me)
    with pytest.raises(PermissionDenied):
        ledger.capture(db, "job-1", actor=me)
    with pytest.raises(PermissionDenied):
        ledger.hold(db, "job-2", tree.member_id, 1, actor=me)
    assert balances.balance(db, "member", tree.member_id).held == 5


def test_a_replayed_key_tells_nothing_to_someone_not_allowed_to_make_the_request(db):
    tree = funded_member(db, account_credits=20)
    ledger.topup(db, tree.account_id, 5, key="order-7")
    stranger = funded_member(db, account_credits=0, role="owner", name="Eve")
    with pytest.raises(PermissionDenied):
        ledger.topup(db, tree.account_id, 5, key="order-7", actor=Actor(stranger.member_id))


def test_reconcile_flags_a_hold_left_open_on_a_finished_job(db):
    from sqlalchemy import text

    from shared.pricing import load_catalog
    from shared.schemas import parse_job
    from shared.services import jobs

    tree = funded_member(db, account_credits=10, member_credits=10)
    spec = parse_job({"job_id": "j-open", "member_id": tree.member_id, "action": "accept_lead",
                      "lead_id": "l"})  # fmt: skip
    jobs.receive(db, spec, load_catalog())
    jobs.reserve(db, "j-open", hold_ttl_s=60, max_wait_s=60)
    assert reconcile(db).ok
    with db.unit_of_work() as session:  # a bug that finishes a job without its hold
        session.execute(text("UPDATE jobs SET status = 'expired' WHERE job_id = 'j-open'"))
    report = reconcile(db)
    assert [p.invariant for p in report.problems] == ["no_open_hold_on_final_job"]
