"""Ledger services: top-up, allocate and reclaim, hold, capture and release, balances, history.

Every movement is one ``LedgerTransaction`` whose entries sum to zero. Wallet balances are
changed only here, only by conditional UPDATEs taken in wallet-id order, so that:

- a debit can never take a wallet below zero, however many writers race (the WHERE
  clause is re-checked by PostgreSQL against the newest row version);
- two transactions never lock the same wallets in opposite orders (no deadlocks).

Idempotency follows TigerBeetle: the same key with the same request replays the first
result, the same key with another request raises IdempotencyConflict. Named UNIQUE
constraints decide races; a loser retries once and replays the winner's result.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import TypeVar

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.db import Database
from shared.errors import (
    HoldAlreadyResolved,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidRequest,
    InvariantViolation,
    NotFound,
)
from shared.models import (
    Account,
    Bucket,
    Hold,
    HoldState,
    LedgerEntry,
    LedgerTransaction,
    Member,
    TxnKind,
    Wallet,
    WalletKind,
    Workspace,
    utcnow,
)
from shared.services.auth import (
    SUPPORT,
    Actor,
    require_support,
    require_workspace_manager,
)
from shared.services.directory import get_account, get_member, get_workspace

MAX_AMOUNT = 10**12  # one operation; far beyond any real order, far below BIGINT
MAX_KEY_LEN = 128
DEFAULT_HOLD_TTL_S = 900.0

T = TypeVar("T")


# ---------------------------------------------------------------- result types


@dataclass(frozen=True)
class Transfer:
    transaction_id: int
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
class HoldResult:
    job_id: str
    wallet_id: int
    amount: int
    state: str
    replayed: bool
    available: int
    held: int

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Leg:
    """One side of a movement: ``delta`` credits on one bucket of one wallet."""

    wallet_id: int
    bucket: Bucket
    delta: int
    guarded: bool  # False only for system wallets, which may go negative by design


# ---------------------------------------------------------------- validation


def check_amount(value: object, what: str = "amount", *, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{what} must be a whole number of credits, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise InvalidRequest(
            f"{what} must be {'zero or ' if allow_zero else ''}positive, got {value}"
        )
    if value > MAX_AMOUNT:
        raise InvalidRequest(f"{what} {value} is above the limit of {MAX_AMOUNT}")
    return value


def check_key(key: str | None, what: str = "idempotency key") -> str | None:
    if key is None:
        return None
    if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY_LEN:
        raise InvalidRequest(f"{what} must be 1 to {MAX_KEY_LEN} characters, got {key!r}")
    return key


def request_hash(**fields: object) -> str:
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


# ---------------------------------------------------------------- the one place balances move


def post(
    session: Session, legs: Iterable[Leg], **txn_values: object
) -> tuple[LedgerTransaction, dict[int, dict]]:
    """Move balanced legs under conditional UPDATEs in wallet-id order, then write the
    transaction and its entries. The one place balances change.

    The UPDATEs come first: when one is refused (InsufficientCredits), this transaction
    has written nothing, so the caller can carry on without a savepoint. Returns the
    transaction and each touched wallet's balances after the move. InvariantViolation for
    anything that should be impossible (unbalanced legs, a held bucket going negative).
    """
    legs = [leg for leg in legs if leg.delta != 0]
    if sum(leg.delta for leg in legs) != 0:
        raise InvariantViolation(
            f"transaction {txn_values.get('kind')} legs do not sum to 0: {legs}"
        )
    per_wallet: dict[int, dict[Bucket, int]] = {}
    guarded: dict[int, bool] = {}
    for leg in legs:
        buckets = per_wallet.setdefault(leg.wallet_id, {Bucket.AVAILABLE: 0, Bucket.HELD: 0})
        buckets[leg.bucket] += leg.delta
        guarded[leg.wallet_id] = guarded.get(leg.wallet_id, False) or leg.guarded

    after: dict[int, dict] = {}
    for wallet_id in sorted(per_wallet):
        d_avail = per_wallet[wallet_id][Bucket.AVAILABLE]
        d_held = per_wallet[wallet_id][Bucket.HELD]
        stmt = (
            update(Wallet)
            .where(Wallet.id == wallet_id)
            .values(available=Wallet.available + d_avail, held=Wallet.held + d_held)
            .returning(Wallet.available, Wallet.held)
        )
        if guarded[wallet_id]:
            stmt = stmt.where(Wallet.available + d_avail >= 0, Wallet.held + d_held >= 0)
        row = session.execute(stmt).one_or_none()
        if row is None:
            _explain_refused_update(session, wallet_id, d_avail, d_held)
        after[wallet_id] = {"available": row.available, "held": row.held}

    txn = new_transaction(session, **txn_values)
    session.add_all(
        LedgerEntry(
            transaction_id=txn.id,
            wallet_id=leg.wallet_id,
            bucket=leg.bucket.value,
            amount=leg.delta,
            balance_after=after[leg.wallet_id][leg.bucket.value],
        )
        for leg in legs
    )
    return txn, after


def _explain_refused_update(session: Session, wallet_id: int, d_avail: int, d_held: int):
    wallet = session.get(Wallet, wallet_id, populate_existing=True)
    if wallet is None:
        raise NotFound("wallet", wallet_id)
    if wallet.available + d_avail < 0:
        raise InsufficientCredits(wallet_label(session, wallet), wallet.available, -d_avail)
    raise InvariantViolation(
        f"wallet {wallet_id} held bucket would go negative: held {wallet.held}, change {d_held}"
    )


def wallet_label(session: Session, wallet: Wallet) -> str:
    owner = owner_of(session, wallet)
    if owner is None:
        return f"{wallet.kind} wallet"
    kind, row = owner
    return f"{kind} {row.id} ({row.name})"


def owner_of(session: Session, wallet: Wallet):
    for kind, model in (("account", Account), ("workspace", Workspace), ("member", Member)):
        if wallet.kind == kind:
            row = session.scalar(select(model).where(model.wallet_id == wallet.id))
            return kind, row
    return None


_SYSTEM_WALLETS: dict[tuple[str, str], int] = {}


def system_wallet_id(session: Session, name: WalletKind) -> int:
    """The id of ``external`` or ``spent``: seeded by the first migration, never changed,
    so it is read once per database."""
    key = (str(session.get_bind().url), name.value)
    if key not in _SYSTEM_WALLETS:
        wallet_id = session.scalar(select(Wallet.id).where(Wallet.system_name == name.value))
        if wallet_id is None:
            raise InvariantViolation(f"system wallet {name.value!r} is missing: run migrations")
        _SYSTEM_WALLETS[key] = wallet_id
    return _SYSTEM_WALLETS[key]


def new_transaction(session: Session, **values: object) -> LedgerTransaction:
    txn = LedgerTransaction(**values)
    session.add(txn)
    session.flush()  # the UNIQUE idempotency key is checked here, before balances move
    return txn


# ---------------------------------------------------------------- idempotent units of work


def is_unique_violation(exc: IntegrityError, name: str) -> bool:
    """True when ``exc`` broke the named unique constraint (PostgreSQL) or its column (SQLite)."""
    text = str(exc.orig)
    table, _, column = name.removeprefix("uq_").rpartition("_")
    return name in text or f"{table}.{column}" in text or _sqlite_column(name) in text


def _sqlite_column(name: str) -> str:
    # SQLite reports "UNIQUE constraint failed: holds.job_id" instead of the constraint name.
    return {
        "uq_ledger_transactions_idempotency_key": "ledger_transactions.idempotency_key",
        "uq_holds_job_id": "holds.job_id",
        "uq_jobs_job_id": "jobs.job_id",
    }.get(name, name)


def run_idempotent(db: Database, constraint: str, work: Callable[[Session], T]) -> T:
    """Run ``work`` in a unit of work; if it lost a race on ``constraint``, run it once more.

    The second run finds the winner's row and replays it (or raises IdempotencyConflict).
    """
    try:
        with db.unit_of_work() as session:
            return work(session)
    except IntegrityError as exc:
        if not is_unique_violation(exc, constraint):
            raise
    with db.unit_of_work() as session:
        return work(session)


def _replayed_transfer(session: Session, key: str, digest: str) -> Transfer | None:
    txn = session.scalar(select(LedgerTransaction).where(LedgerTransaction.idempotency_key == key))
    if txn is None:
        return None
    if txn.request_hash != digest:
        raise IdempotencyConflict(
            f"idempotency key {key.split(':', 1)[1]!r} was already used for a different request"
        )
    return transfer_from_entries(session, txn, replayed=True)


def transfer_from_entries(session: Session, txn: LedgerTransaction, *, replayed: bool) -> Transfer:
    entries = session.scalars(
        select(LedgerEntry).where(LedgerEntry.transaction_id == txn.id).order_by(LedgerEntry.id)
    )
    after = {e.wallet_id: e.balance_after for e in entries if e.bucket == Bucket.AVAILABLE}
    return Transfer(
        txn.id, txn.kind, txn.amount, txn.debit_wallet_id, txn.credit_wallet_id, replayed, after
    )


def _transfer(
    db: Database,
    *,
    kind: TxnKind,
    key: str | None,
    digest: str,
    actor: Actor,
    plan: Callable[[Session], tuple[int, int, int]],
    memo: str | None = None,
) -> Transfer:
    """Move ``amount`` from one wallet's available bucket to another's, idempotently.

    ``plan(session)`` checks permissions and returns (from_wallet, to_wallet, amount); it
    runs inside the transaction, after the replay check, so a replay needs no permission
    to have survived and a new request sees current balances.
    """
    scoped_key = f"{kind.value}:{key}" if key else None

    def work(session: Session) -> Transfer:
        # plan() checks permissions first: a replay tells nothing to someone who may not
        # have made the request.
        source, target, amount = plan(session)
        if scoped_key:
            replay = _replayed_transfer(session, scoped_key, digest)
            if replay is not None:
                return replay
        txn_kind = kind
        if amount < 0:
            source, target, amount = target, source, -amount
            txn_kind = TxnKind.RECLAIM
        legs = [
            Leg(source, Bucket.AVAILABLE, -amount, kind != TxnKind.TOPUP),
            Leg(target, Bucket.AVAILABLE, amount, True),
        ]
        # A racing request with the same key loses on the UNIQUE key at the INSERT, after
        # its UPDATEs: it rolls back whole and replays the winner (run_idempotent).
        txn, after = post(
            session,
            legs,
            kind=txn_kind.value,
            idempotency_key=scoped_key,
            request_hash=digest if scoped_key else None,
            amount=amount,
            debit_wallet_id=source,
            credit_wallet_id=target,
            actor=str(actor),
            memo=memo,
        )
        available = {wallet_id: b["available"] for wallet_id, b in after.items()}
        return Transfer(txn.id, txn.kind, amount, source, target, False, available)

    try:
        return run_idempotent(db, "uq_ledger_transactions_idempotency_key", work)
    except InsufficientCredits:
        # Two requests with one key at once: the loser waited on the wallet row, then found
        # the winner had spent the credits. If the key has committed since, replay it.
        if scoped_key is None:
            raise
        with db.unit_of_work() as session:
            replay = _replayed_transfer(session, scoped_key, digest)
        if replay is None:
            raise
        return replay


# ---------------------------------------------------------------- top-up and allocation


def topup(
    db: Database, account_id: int, amount: int, *, key: str | None = None, actor: Actor = SUPPORT
) -> Transfer:
    """Support adds purchased credits to an account pool: external -> account.available."""
    amount = check_amount(amount)
    key = check_key(key)

    def plan(session: Session) -> tuple[int, int, int]:
        require_support(session, actor, "top up accounts")
        account = get_account(session, account_id)
        return system_wallet_id(session, WalletKind.EXTERNAL), account.wallet_id, amount

    digest = request_hash(op="topup", account=account_id, amount=amount)
    return _transfer(db, kind=TxnKind.TOPUP, key=key, digest=digest, actor=actor, plan=plan)


def allocate(
    db: Database,
    target_kind: str,
    target_id: int,
    *,
    amount: int | None = None,
    set_to: int | None = None,
    key: str | None = None,
    actor: Actor = SUPPORT,
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

    def plan(session: Session) -> tuple[int, int, int]:
        parent_wallet, child_wallet = _allocation_wallets(session, actor, target_kind, target_id)
        if amount is not None:
            return parent_wallet, child_wallet, amount
        current = _locked_available(session, parent_wallet, child_wallet)
        return parent_wallet, child_wallet, set_to - current

    digest = request_hash(op="allocate", kind=target_kind, id=target_id, amount=amount, set=set_to)
    return _transfer(db, kind=TxnKind.ALLOCATE, key=key, digest=digest, actor=actor, plan=plan)


def _allocation_wallets(
    session: Session, actor: Actor, target_kind: str, target_id: int
) -> tuple[int, int]:
    if target_kind == "workspace":
        workspace = get_workspace(session, target_id)
        require_workspace_manager(session, actor, workspace, "allocate to this workspace")
        return get_account(session, workspace.account_id).wallet_id, workspace.wallet_id
    member = get_member(session, target_id)
    workspace = get_workspace(session, member.workspace_id)
    require_workspace_manager(session, actor, workspace, "allocate to this member")
    return workspace.wallet_id, member.wallet_id


def _locked_available(session: Session, parent_wallet: int, child_wallet: int) -> int:
    """Lock both wallets in id order and read the child's available balance.

    ``set_to`` depends on the current balance, so it must not change under us; on SQLite
    the IMMEDIATE transaction already holds the database lock.
    """
    rows = session.execute(
        select(Wallet.id, Wallet.available)
        .where(Wallet.id.in_([parent_wallet, child_wallet]))
        .order_by(Wallet.id)
        .with_for_update()
    ).all()
    return {row.id: row.available for row in rows}[child_wallet]


# ---------------------------------------------------------------- holds: two-phase spending


def hold_in(
    session: Session,
    job_id: str,
    member_id: int,
    amount: int,
    *,
    ttl_s: float = DEFAULT_HOLD_TTL_S,
    actor: Actor = SUPPORT,
) -> HoldResult:
    """Reserve ``amount`` of a member's available credits for one job, inside ``session``.

    Replays an existing hold for the same job (same wallet and amount); a different wallet
    or amount under that job id is an IdempotencyConflict.
    """
    job_id = check_key(job_id, "job_id")
    amount = check_amount(amount)
    # Members spend through jobs: only the pipeline (acting as support) holds, captures
    # and releases, so nobody can free credits a vendor is still working on.
    require_support(session, actor, "hold credits")
    member = get_member(session, member_id)
    existing = session.scalar(select(Hold).where(Hold.job_id == job_id))
    if existing is not None:
        if existing.wallet_id != member.wallet_id or existing.amount != amount:
            raise IdempotencyConflict(
                f"job {job_id!r} already holds {existing.amount} credits on wallet "
                f"{existing.wallet_id}; this request asks {amount} on wallet {member.wallet_id}"
            )
        return _hold_result(session, existing, replayed=True)
    # The conditional UPDATE goes first: if the member is short, nothing is written, and a
    # caller can park the job in the same transaction.
    _txn, after = post(
        session,
        [
            Leg(member.wallet_id, Bucket.AVAILABLE, -amount, True),
            Leg(member.wallet_id, Bucket.HELD, amount, True),
        ],
        kind=TxnKind.HOLD.value,
        amount=amount,
        debit_wallet_id=member.wallet_id,
        credit_wallet_id=member.wallet_id,
        actor=str(actor),
        job_id=job_id,
    )
    now = utcnow()
    session.add(
        Hold(
            job_id=job_id,
            wallet_id=member.wallet_id,
            amount=amount,
            state=HoldState.HELD.value,
            created_at=now,
            expires_at=now + timedelta(seconds=ttl_s),
        )
    )
    session.flush()  # uq_holds_job_id decides a race between two deliveries
    balances = after[member.wallet_id]
    return HoldResult(job_id, member.wallet_id, amount, HoldState.HELD.value, False, **balances)


def _hold_result(session: Session, hold: Hold, *, replayed: bool) -> HoldResult:
    wallet = session.get(Wallet, hold.wallet_id, populate_existing=True)
    return HoldResult(
        hold.job_id,
        hold.wallet_id,
        hold.amount,
        hold.state,
        replayed,
        wallet.available,
        wallet.held,
    )


def resolve_in(session: Session, job_id: str, outcome: HoldState, *, actor: Actor = SUPPORT):
    """Capture or release a job's hold exactly once, inside ``session``.

    The state change is ``UPDATE ... WHERE state = 'held'``: of two racing resolutions only
    one sees the row, and the loser replays the winner's outcome or is refused.
    """
    if outcome not in (HoldState.CAPTURED, HoldState.RELEASED):
        raise InvalidRequest(f"a hold resolves to captured or released, not {outcome}")
    require_support(session, actor, f"mark holds {outcome}")
    row = session.execute(
        update(Hold)
        .where(Hold.job_id == job_id, Hold.state == HoldState.HELD.value)
        .values(state=outcome.value, resolved_at=utcnow())
        .returning(Hold.id, Hold.wallet_id, Hold.amount)
    ).one_or_none()
    if row is None:
        hold = session.scalar(select(Hold).where(Hold.job_id == job_id))
        if hold is None:
            raise NotFound("hold for job", job_id)
        if hold.state != outcome.value:
            raise HoldAlreadyResolved(job_id, hold.state, outcome.value)
        return _hold_result(session, hold, replayed=True)

    kind = TxnKind.CAPTURE if outcome == HoldState.CAPTURED else TxnKind.RELEASE
    if kind == TxnKind.CAPTURE:
        target = Leg(
            system_wallet_id(session, WalletKind.SPENT), Bucket.AVAILABLE, row.amount, False
        )
    else:
        target = Leg(row.wallet_id, Bucket.AVAILABLE, row.amount, True)
    _txn, after = post(
        session,
        [Leg(row.wallet_id, Bucket.HELD, -row.amount, True), target],
        kind=kind.value,
        amount=row.amount,
        debit_wallet_id=row.wallet_id,
        credit_wallet_id=target.wallet_id,
        actor=str(actor),
        job_id=job_id,
    )
    return HoldResult(
        job_id, row.wallet_id, row.amount, outcome.value, False, **after[row.wallet_id]
    )


def hold(db: Database, job_id: str, member_id: int, amount: int, **kwargs) -> HoldResult:
    return run_idempotent(
        db, "uq_holds_job_id", lambda s: hold_in(s, job_id, member_id, amount, **kwargs)
    )


def capture(db: Database, job_id: str, *, actor: Actor = SUPPORT) -> HoldResult:
    with db.unit_of_work() as session:
        return resolve_in(session, job_id, HoldState.CAPTURED, actor=actor)


def release(db: Database, job_id: str, *, actor: Actor = SUPPORT) -> HoldResult:
    with db.unit_of_work() as session:
        return resolve_in(session, job_id, HoldState.RELEASED, actor=actor)
