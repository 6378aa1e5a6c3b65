"""Transfers: support's top-ups, and allocations down (or reclaims up) the account tree.

    external ── top-up ──> account pool ── allocate ──> workspace pool ── allocate ──> member
                                        <── reclaim ──                 <── reclaim ──

Each is one balanced transaction posted by :func:`shared.services.posting.post`. An
optional idempotency key, scoped to the account, makes a retry replay the first result
(TigerBeetle's rule; :mod:`shared.services.idempotency`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db import Database
from shared.errors import IdempotencyConflict, InvalidRequest
from shared.models import Bucket, LedgerEntry, LedgerTransaction, Member, TxnKind, WalletKind
from shared.services.auth import (
    SUPPORT,
    Actor,
    require_may_reclaim_from,
    require_support,
    require_workspace_manager,
)
from shared.services.directory import get_account, get_member, get_workspace
from shared.services.idempotency import check_key, request_hash, run_idempotent
from shared.services.posting import Leg, check_amount, post, system_wallet_id
from shared.services.recovery import members_with_parked_jobs
from shared.services.row_locks import lock_wallets

IDEMPOTENCY_CONSTRAINT = "uq_ledger_transactions_idempotency_key"


@dataclass(frozen=True)
class Transfer:
    transaction_id: int | None  # None: nothing needed to move (a --set to the balance)
    kind: str
    amount: int
    from_wallet_id: int | None
    to_wallet_id: int | None
    replayed: bool
    # wallet id -> its available balance right after this transaction.
    available_after: dict[int, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        after = {str(k): v for k, v in self.available_after.items()}  # JSON keys are text
        return asdict(self) | {"available_after": after}


@dataclass(frozen=True)
class Plan:
    """What a transfer moves, decided inside its transaction after the permission check."""

    account_id: int
    source: int
    target: int
    amount: int  # negative: the other way (a reclaim)
    # Called with the member being reclaimed from, if any: admins may not take credits
    # from an owner or from another admin.
    reclaimed_member: int | None = None


def _replay(session: Session, key: str, digest: str) -> Transfer | None:
    txn = session.scalar(select(LedgerTransaction).where(LedgerTransaction.idempotency_key == key))
    if txn is None:
        return None
    if txn.request_hash != digest:
        raise IdempotencyConflict(
            f"idempotency key {key.split(':', 2)[2]!r} was already used for a different request"
        )
    entries = session.scalars(
        select(LedgerEntry).where(LedgerEntry.transaction_id == txn.id).order_by(LedgerEntry.id)
    )
    # As in a first run: a top-up's source, the external wallet, is nobody's business.
    hidden = txn.debit_wallet_id if txn.kind == TxnKind.TOPUP else None
    after = {e.wallet_id: e.balance_after for e in entries
             if e.bucket == Bucket.AVAILABLE and e.wallet_id != hidden}  # fmt: skip
    return Transfer(
        txn.id, txn.kind, txn.amount, txn.debit_wallet_id, txn.credit_wallet_id, True, after
    )


def _transfer_in(
    session: Session,
    *,
    kind: TxnKind,
    key: str | None,
    digest: str,
    actor: Actor,
    plan: Callable[[Session], Plan],
    on_member_funded: Callable[[int], object] | None = None,
) -> Transfer:
    """Move credits between two wallets' available buckets, idempotently, in ``session``.

    ``plan(session)`` checks permissions first, so a replay tells nothing to someone who
    may not have made the request, and a new request sees current balances.
    ``on_member_funded(member_id)`` runs after the commit when credits reached a member
    with parked jobs, so those resume at once instead of at the next sweep.
    """
    planned = plan(session)
    # Keys are scoped to their account: one customer's "q3-bonus" is not another's.
    scoped_key = f"{planned.account_id}:{kind.value}:{key}" if key else None
    if scoped_key:
        replay = _replay(session, scoped_key, digest)
        if replay is not None:
            return replay
    source, target, amount, txn_kind = planned.source, planned.target, planned.amount, kind
    if amount < 0:
        source, target, amount, txn_kind = target, source, -amount, TxnKind.RECLAIM
        if planned.reclaimed_member is not None:
            require_may_reclaim_from(session, actor, planned.reclaimed_member)
    if amount == 0 and not scoped_key:  # nothing to move, nothing to remember: write nothing
        return Transfer(None, txn_kind.value, 0, source, target, False, {})
    legs = [
        Leg(source, Bucket.AVAILABLE, -amount, kind != TxnKind.TOPUP),
        Leg(target, Bucket.AVAILABLE, amount, True),
    ]
    txn_id, after = post(
        session,
        legs,
        kind=txn_kind.value,
        idempotency_key=scoped_key,
        request_hash=digest if scoped_key else None,
        amount=amount,
        debit_wallet_id=source,
        credit_wallet_id=target,
        actor=str(actor),
    )
    funded = planned.reclaimed_member if txn_kind == TxnKind.ALLOCATE else None
    if funded and on_member_funded and members_with_parked_jobs(session, [target]):
        session.after_commit(lambda: on_member_funded(funded))
    # System wallets stay internal: the external wallet's balance is nobody's business.
    available = {
        w: b["available"] for w, b in after.items() if kind != TxnKind.TOPUP or w != source
    }
    return Transfer(txn_id, txn_kind.value, amount, source, target, False, available)


def _transfer(db: Database, *, key: str | None, **kwargs: Any) -> Transfer:
    return run_idempotent(
        db,
        IDEMPOTENCY_CONSTRAINT,
        lambda session: _transfer_in(session, key=key, **kwargs),
        replay_refusals=key is not None,
    )


def topup_in(
    session: Session, account_id: int, amount: int, *, key: str | None, actor: Actor
) -> Transfer:
    """A top-up inside a caller's unit of work (account creation with initial credits)."""
    amount = check_amount(amount)
    key = check_key(key)

    def plan(session: Session) -> Plan:
        require_support(session, actor, "top up accounts")
        account = get_account(session, account_id)
        external = system_wallet_id(session, WalletKind.EXTERNAL)
        return Plan(account.id, external, account.wallet_id, amount)

    digest = request_hash(op="topup", account=account_id, amount=amount)
    return _transfer_in(session, kind=TxnKind.TOPUP, key=key, digest=digest, actor=actor,
                        plan=plan)  # fmt: skip


def topup(
    db: Database, account_id: int, amount: int, *, key: str | None = None, actor: Actor = SUPPORT
) -> Transfer:
    """Support adds purchased credits to an account pool: external -> account.available."""
    check_amount(amount)
    check_key(key)
    return run_idempotent(
        db,
        IDEMPOTENCY_CONSTRAINT,
        lambda session: topup_in(session, account_id, amount, key=key, actor=actor),
        replay_refusals=key is not None,
    )


def allocate(
    db: Database,
    target_kind: str,
    target_id: int,
    *,
    amount: int | None = None,
    set_to: int | None = None,
    key: str | None = None,
    actor: Actor = SUPPORT,
    on_member_funded: Callable[[int], object] | None = None,
) -> Transfer:
    """Move credits from the parent pool to a workspace or member, or back.

    Give either ``amount`` (negative reclaims) or ``set_to``, the balance the target's
    available bucket should end at; the difference moves. A member's held credits are
    never reclaimed: they belong to jobs in flight.
    """
    if (amount is None) == (set_to is None):
        raise InvalidRequest("give exactly one of amount or set_to")
    if target_kind not in ("workspace", "member"):
        raise InvalidRequest(f"allocate to a workspace or a member, not {target_kind!r}")
    if amount is not None:
        if isinstance(amount, bool) or not isinstance(amount, int) or amount == 0:
            raise InvalidRequest(f"amount must be a non-zero whole number, got {amount!r}")
        check_amount(abs(amount))
    else:
        check_amount(set_to, "set_to", allow_zero=True)
    key = check_key(key)

    def plan(session: Session) -> Plan:
        planned = _allocation_plan(session, actor, target_kind, target_id)
        if amount is not None:
            return Plan(**(asdict(planned) | {"amount": amount}))
        # set_to depends on the current balance, so it must not change under us: lock
        # both wallets (in id order) before reading it.
        current = lock_wallets(session, (planned.source, planned.target))[planned.target]
        return Plan(**(asdict(planned) | {"amount": set_to - current}))

    digest = request_hash(op="allocate", kind=target_kind, id=target_id, amount=amount, set=set_to)
    return _transfer(db, kind=TxnKind.ALLOCATE, key=key, digest=digest, actor=actor, plan=plan,
                     on_member_funded=on_member_funded)  # fmt: skip


def _allocation_plan(session: Session, actor: Actor, target_kind: str, target_id: int) -> Plan:
    """Parent and child wallets of an allocation, once the actor may manage the target."""
    if target_kind == "workspace":
        workspace = get_workspace(session, target_id, actor=actor)
        require_workspace_manager(session, actor, workspace, "allocate to this workspace")
        account = get_account(session, workspace.account_id)
        return Plan(account.id, account.wallet_id, workspace.wallet_id, 0)
    member = get_member(session, target_id, actor=actor)
    workspace = get_workspace(session, member.workspace_id)
    require_workspace_manager(session, actor, workspace, "allocate to this member")
    if not member.active:
        # Deactivation returned their credits; nothing may flow to or from them again.
        raise InvalidRequest(f"member {member.id} is deactivated: their wallet is closed")
    return Plan(workspace.account_id, workspace.wallet_id, member.wallet_id, 0, member.id)


def reclaim_all_in(session: Session, member: Member, *, actor: Actor) -> int:
    """Return all of a member's available credits to their workspace pool (deactivation)."""
    workspace = get_workspace(session, member.workspace_id)
    available = lock_wallets(session, (workspace.wallet_id, member.wallet_id))[member.wallet_id]
    if available:
        post(
            session,
            [
                Leg(member.wallet_id, Bucket.AVAILABLE, -available, True),
                Leg(workspace.wallet_id, Bucket.AVAILABLE, available, True),
            ],
            kind=TxnKind.RECLAIM.value,
            amount=available,
            debit_wallet_id=member.wallet_id,
            credit_wallet_id=workspace.wallet_id,
            actor=str(actor),
            memo=f"member {member.id} deactivated",
        )
    return available
