"""The ledger against a model: random sequences of every operation, checked after each step.

A hypothesis state machine drives the real services on SQLite and keeps, in plain Python,
what every balance should be. After every step the books must reconcile, every balance
must match the model and nothing may be negative. A refused operation (insufficient
credits, a resolved hold, a reused key) must change nothing, which the model checks too:
it only moves when the ledger should have moved.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import select

from shared.db import Database
from shared.errors import (
    HoldAlreadyResolved,
    IdempotencyConflict,
    InsufficientCredits,
    NotFound,
)
from shared.models import Wallet
from shared.services import directory, holds, ledger
from shared.services.reconcile import reconcile_in

Owner = tuple[str, int]  # ("account" | "workspace" | "member", id)
HoldKey = tuple[int, str]  # (member id, job_id)

KEYS = st.none() | st.sampled_from(["k1", "k2", "k3"])
# Few job ids, so members often share one (two jobs) and a member repeats one (a replay).
JOB_IDS = st.sampled_from([f"job-{i}" for i in range(8)])


class LedgerMachine(RuleBasedStateMachine):
    """One account with two workspaces (two members and one member) and a model of it."""

    template: Path  # a migrated SQLite file; set by the test below

    def __init__(self) -> None:
        super().__init__()
        self.tmpdir = tempfile.mkdtemp(prefix="credits-stateful-")
        path = Path(self.tmpdir) / "credits.db"
        shutil.copyfile(self.template, path)
        self.db = Database(f"sqlite:///{path}")

        account = directory.create_account(self.db, "Acme")
        sales = directory.create_workspace(self.db, account.id, "Sales")
        support = directory.create_workspace(self.db, account.id, "Support")
        ann = directory.add_member(self.db, sales.id, "Ann")
        bo = directory.add_member(self.db, sales.id, "Bo")
        cy = directory.add_member(self.db, support.id, "Cy")

        self.account_id = account.id
        self.wallet: dict[Owner, int] = {
            ("account", account.id): account.wallet_id,
            ("workspace", sales.id): sales.wallet_id,
            ("workspace", support.id): support.wallet_id,
            ("member", ann.id): ann.wallet_id,
            ("member", bo.id): bo.wallet_id,
            ("member", cy.id): cy.wallet_id,
        }
        self.parent: dict[Owner, Owner] = {
            ("workspace", sales.id): ("account", account.id),
            ("workspace", support.id): ("account", account.id),
            ("member", ann.id): ("workspace", sales.id),
            ("member", bo.id): ("workspace", sales.id),
            ("member", cy.id): ("workspace", support.id),
        }
        self.members = [ann.id, bo.id, cy.id]

        # The model.
        self.available: dict[Owner, int] = dict.fromkeys(self.wallet, 0)
        self.held: dict[int, int] = dict.fromkeys(self.members, 0)
        self.holds: dict[HoldKey, tuple[int, str]] = {}  # (member, job_id) -> (amount, state)
        self.topup_keys: dict[str, int] = {}
        self.allocation_keys: dict[str, tuple] = {}
        self.purchased = 0
        self.spent = 0

        # Start funded, so that holds and their resolutions happen in most examples.
        self.purchased = self.available[("account", account.id)] = 100
        ledger.topup(self.db, account.id, 100)
        for target in sorted(self.parent, key=lambda owner: owner[0] != "workspace"):
            funding = 20 if target[0] == "workspace" else 6
            ledger.allocate(self.db, *target, amount=funding)
            self.available[self.parent[target]] -= funding
            self.available[target] += funding

    def teardown(self) -> None:
        self.db.dispose()
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    # ------------------------------------------------------------ money in

    @rule(amount=st.integers(1, 40), key=KEYS)
    def topup(self, amount: int, key: str | None) -> None:
        account: Owner = ("account", self.account_id)
        if key in self.topup_keys:
            if self.topup_keys[key] != amount:
                with pytest.raises(IdempotencyConflict, match=key):
                    ledger.topup(self.db, self.account_id, amount, key=key)
                return
            assert ledger.topup(self.db, self.account_id, amount, key=key).replayed
            return
        moved = ledger.topup(self.db, self.account_id, amount, key=key)
        assert not moved.replayed
        self.available[account] += amount
        self.purchased += amount
        if key is not None:
            self.topup_keys[key] = amount
        assert moved.available_after[self.wallet[account]] == self.available[account]

    @precondition(lambda self: self.topup_keys)
    @rule(data=st.data())
    def replay_topup(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.topup_keys)), label="key")
        self.topup(self.topup_keys[key], key)

    # ------------------------------------------------------------ allocate and reclaim

    def _allocate(self, target: Owner, *, amount=None, set_to=None, key=None) -> None:
        parent = self.parent[target]
        request = (target, amount, set_to)
        call = {"amount": amount, "set_to": set_to, "key": key}
        if key in self.allocation_keys:
            if self.allocation_keys[key] != request:
                with pytest.raises(IdempotencyConflict, match=key):
                    ledger.allocate(self.db, *target, **call)
                return
            assert ledger.allocate(self.db, *target, **call).replayed
            return
        delta = amount if amount is not None else set_to - self.available[target]
        if delta == 0:
            # A keyed set that moves nothing is remembered (a retry replays "nothing moved");
            # the model below tracks keys of requests that moved credits only.
            call["key"] = key = None
        source = parent if delta > 0 else target
        if self.available[source] < abs(delta):
            with pytest.raises(InsufficientCredits):
                ledger.allocate(self.db, *target, **call)
            return
        moved = ledger.allocate(self.db, *target, **call)
        assert not moved.replayed
        assert moved.amount == abs(delta)
        assert (moved.transaction_id is None) == (delta == 0)
        assert moved.kind == ("allocate" if delta >= 0 else "reclaim")
        self.available[parent] -= delta
        self.available[target] += delta
        if key is not None:
            self.allocation_keys[key] = request
        if delta:
            for owner in (parent, target):
                assert moved.available_after[self.wallet[owner]] == self.available[owner]

    @rule(
        data=st.data(),
        how=st.sampled_from(["amount", "set_to"]),
        amount=st.integers(-15, 15).filter(bool),
        set_to=st.integers(0, 30),
        key=KEYS,
    )
    def allocate(
        self, data: st.DataObject, how: str, amount: int, set_to: int, key: str | None
    ) -> None:
        """A positive amount allocates, a negative one reclaims; set_to moves the difference."""
        target = data.draw(st.sampled_from(sorted(self.parent)), label="target")
        if how == "amount":
            self._allocate(target, amount=amount, key=key)
        else:
            self._allocate(target, set_to=set_to, key=key)

    @precondition(lambda self: self.allocation_keys)
    @rule(data=st.data())
    def replay_allocation(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.allocation_keys)), label="key")
        target, amount, set_to = self.allocation_keys[key]
        self._allocate(target, amount=amount, set_to=set_to, key=key)

    # ------------------------------------------------------------ holds

    @rule(data=st.data(), job_id=JOB_IDS, amount=st.integers(1, 8))
    def hold(self, data: st.DataObject, job_id: str, amount: int) -> None:
        """A hold belongs to a member and a job_id: the same job_id for another member is
        another hold; for the same member it replays (same amount) or conflicts."""
        member = data.draw(st.sampled_from(self.members), label="member")
        owner: Owner = ("member", member)
        known = self.holds.get((member, job_id))
        if known is not None:
            held_amount, state = known
            if held_amount != amount:
                with pytest.raises(IdempotencyConflict, match=job_id):
                    holds.hold(self.db, job_id, member, amount)
                return
            result = holds.hold(self.db, job_id, member, amount)
            assert result.replayed
            assert (result.amount, result.state) == (held_amount, state)
            return
        if self.available[owner] < amount:
            with pytest.raises(InsufficientCredits):
                holds.hold(self.db, job_id, member, amount)
            return
        result = holds.hold(self.db, job_id, member, amount)
        self.available[owner] -= amount
        self.held[member] += amount
        self.holds[(member, job_id)] = (amount, "held")
        assert (result.state, result.replayed) == ("held", False)
        assert (result.available, result.held) == (self.available[owner], self.held[member])

    @precondition(lambda self: self.holds)
    @rule(data=st.data())
    def replay_hold(self, data: st.DataObject) -> None:
        member, job_id = data.draw(st.sampled_from(sorted(self.holds)), label="hold")
        amount, state = self.holds[(member, job_id)]
        result = holds.hold(self.db, job_id, member, amount)
        assert result.replayed
        assert (result.amount, result.state) == (amount, state)

    @precondition(lambda self: self.holds)
    @rule(data=st.data())
    def reuse_job_id_for_another_amount(self, data: st.DataObject) -> None:
        member, job_id = data.draw(st.sampled_from(sorted(self.holds)), label="hold")
        amount, _ = self.holds[(member, job_id)]
        with pytest.raises(IdempotencyConflict, match=job_id):
            holds.hold(self.db, job_id, member, amount + 1)

    def _resolve(self, key: HoldKey, outcome: str) -> None:
        member, job_id = key
        amount, state = self.holds[key]
        resolve = holds.capture if outcome == "captured" else holds.release
        if state == "held":
            result = resolve(self.db, job_id, member)
            owner: Owner = ("member", member)
            self.held[member] -= amount
            if outcome == "captured":
                self.spent += amount
            else:
                self.available[owner] += amount
            self.holds[key] = (amount, outcome)
            assert (result.state, result.replayed) == (outcome, False)
            assert (result.available, result.held) == (self.available[owner], self.held[member])
        elif state == outcome:
            result = resolve(self.db, job_id, member)
            assert (result.state, result.replayed) == (outcome, True)
        else:
            with pytest.raises(HoldAlreadyResolved, match=f"already {state}"):
                resolve(self.db, job_id, member)

    @precondition(lambda self: self.holds)
    @rule(data=st.data())
    def capture(self, data: st.DataObject) -> None:
        self._resolve(data.draw(st.sampled_from(sorted(self.holds)), label="hold"), "captured")

    @precondition(lambda self: self.holds)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        self._resolve(data.draw(st.sampled_from(sorted(self.holds)), label="hold"), "released")

    @rule(data=st.data(), outcome=st.sampled_from([holds.capture, holds.release]))
    def resolve_a_job_that_never_held(self, data: st.DataObject, outcome) -> None:
        member = data.draw(st.sampled_from(self.members), label="member")
        with pytest.raises(NotFound):
            outcome(self.db, "job-that-never-was", member)

    # ------------------------------------------------------------ after every step

    @invariant()
    def books_reconcile_and_match_the_model(self) -> None:
        with self.db.unit_of_work() as session:
            report = reconcile_in(session)
            stored = {
                row.id: (row.available, row.held)
                for row in session.execute(select(Wallet.id, Wallet.available, Wallet.held))
            }
        assert report.ok, report.problems
        for owner, wallet_id in self.wallet.items():
            held = self.held[owner[1]] if owner[0] == "member" else 0
            assert stored[wallet_id] == (self.available[owner], held), owner
            assert min(stored[wallet_id]) >= 0, owner
        figures = report.figures
        assert figures["purchased"] == self.purchased
        assert figures["spent"] == self.spent
        assert figures["open_held_credits"] == sum(self.held.values())
        assert figures["open_holds"] == sum(1 for _, s in self.holds.values() if s == "held")
        in_wallets = figures["account_pools"] + figures["workspace_pools"]
        assert in_wallets + figures["member_wallets"] + self.spent == self.purchased


def test_ledger_matches_its_model_under_random_operations(sqlite_template: Path):
    LedgerMachine.template = sqlite_template
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            max_examples=30,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
