"""Posting: the one place balances change.

Every movement is one ``LedgerTransaction`` whose entries sum to zero. Wallet balances are
changed only by :func:`post`, only by conditional UPDATEs taken in wallet-id order, so
that:

- a debit can never take a wallet below zero, however many writers race (PostgreSQL
  re-checks the WHERE clause against the newest row version);
- two transactions never lock the same wallets in opposite orders (no deadlocks).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.orm import Session

from shared.errors import InsufficientCredits, InvalidRequest, InvariantViolation, NotFound
from shared.models import (
    Account,
    Bucket,
    LedgerEntry,
    LedgerTransaction,
    Member,
    Wallet,
    WalletKind,
    Workspace,
    utcnow,
)

MAX_AMOUNT = 10**12  # one operation; far beyond any real order, far below BIGINT


@dataclass(frozen=True)
class Leg:
    """One side of a movement: ``delta`` credits on one bucket of one wallet."""

    wallet_id: int
    bucket: Bucket
    delta: int
    guarded: bool  # False only for system wallets, which may go negative by design


Balances = dict[int, dict[str, int]]  # wallet id -> {"available": .., "held": ..} after


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


# Statements built once: constructing a statement costs more CPU than running it.
_W, _T, _E = Wallet.__table__, LedgerTransaction.__table__, LedgerEntry.__table__
_MOVE = (
    update(_W)
    .where(_W.c.id == bindparam("wallet"))
    .values(available=_W.c.available + bindparam("d_avail"), held=_W.c.held + bindparam("d_held"))
    .returning(_W.c.available, _W.c.held)
)
_MOVE_GUARDED = _MOVE.where(
    _W.c.available + bindparam("d_avail") >= 0, _W.c.held + bindparam("d_held") >= 0
)
_INSERT_TXN = insert(_T).returning(_T.c.id)
_INSERT_ENTRIES = insert(_E)


def post(session: Session, legs: Iterable[Leg], **txn_values: object) -> tuple[int, Balances]:
    """Move balanced legs under conditional UPDATEs in wallet-id order, then write the
    transaction and its entries. Returns the transaction id and each touched wallet's
    balances after the move.

    The UPDATEs come first: when one is refused (InsufficientCredits), this transaction
    has written nothing, so the caller can carry on without a savepoint. InvariantViolation
    for anything that should be impossible (unbalanced legs, a held bucket going negative).
    """
    legs = [leg for leg in legs if leg.delta != 0]
    if sum(leg.delta for leg in legs) != 0:
        raise InvariantViolation(
            f"transaction {txn_values.get('kind')} legs do not sum to 0: {legs}"
        )
    conn = session.connection()
    after = _move_balances(session, conn, legs)
    now = utcnow()
    txn_id = conn.execute(_INSERT_TXN, {"created_at": now, **txn_values}).scalar_one()
    if not legs:  # a keyed request that moved nothing: its key is all there is to record
        return txn_id, after
    conn.execute(
        _INSERT_ENTRIES,
        [
            {
                "transaction_id": txn_id,
                "wallet_id": leg.wallet_id,
                "bucket": leg.bucket.value,
                "amount": leg.delta,
                "balance_after": after[leg.wallet_id][leg.bucket.value],
                "created_at": now,
            }
            for leg in legs
        ],
    )
    return txn_id, after


def _move_balances(session: Session, conn: Connection, legs: list[Leg]) -> Balances:
    per_wallet: dict[int, dict[Bucket, int]] = {}
    guarded: dict[int, bool] = {}
    for leg in legs:
        buckets = per_wallet.setdefault(leg.wallet_id, {Bucket.AVAILABLE: 0, Bucket.HELD: 0})
        buckets[leg.bucket] += leg.delta
        guarded[leg.wallet_id] = guarded.get(leg.wallet_id, False) or leg.guarded
    after: Balances = {}
    for wallet_id in sorted(per_wallet):
        d_avail = per_wallet[wallet_id][Bucket.AVAILABLE]
        d_held = per_wallet[wallet_id][Bucket.HELD]
        stmt = _MOVE_GUARDED if guarded[wallet_id] else _MOVE
        row = conn.execute(
            stmt, {"wallet": wallet_id, "d_avail": d_avail, "d_held": d_held}
        ).one_or_none()
        if row is None:
            _explain_refused_update(session, wallet_id, d_avail, d_held)
        after[wallet_id] = {"available": row.available, "held": row.held}
    return after


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
    for kind, model in (("account", Account), ("workspace", Workspace), ("member", Member)):
        if wallet.kind == kind:
            row = session.scalar(select(model).where(model.wallet_id == wallet.id))
            return f"{kind} {row.id} ({row.name})"
    return f"{wallet.kind} wallet"


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
