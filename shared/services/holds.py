"""Holds: two-phase spending, after TigerBeetle's two-phase transfers.

    member.available ── hold ──> member.held ── capture ──> spent
                                             └─ release ──> member.available

A hold belongs to one job of one member (unique on wallet and job_id). It resolves
exactly once: a repeated capture replays the first result, and capturing a released
hold (or the reverse) is HoldAlreadyResolved. Only the pipeline holds, captures and
releases, so nobody can free credits a vendor is still working on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import timedelta

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from shared.db import Database
from shared.errors import HoldAlreadyResolved, IdempotencyConflict, InvalidRequest, NotFound
from shared.models import Bucket, Hold, HoldState, Member, TxnKind, Wallet, WalletKind, utcnow
from shared.services.auth import PIPELINE, Actor, require_pipeline
from shared.services.idempotency import check_key, run_idempotent
from shared.services.posting import Leg, check_amount, post, system_wallet_id

HOLD_CONSTRAINT = "uq_holds_wallet_id_job_id"
_H = Hold.__table__
_INSERT_HOLD = insert(_H)
_RESOLVE = (
    update(_H)
    .where(_H.c.wallet_id == bindparam("w"), _H.c.job_id == bindparam("j"))
    .where(_H.c.state == HoldState.HELD.value)
    .values(state=bindparam("to"), resolved_at=bindparam("at"))
    .returning(_H.c.amount)
)
DEFAULT_HOLD_TTL_S = 900.0


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


def member_wallet(session: Session, member_id: int) -> int:
    wallet_id = session.scalar(select(Member.wallet_id).where(Member.id == member_id))
    if wallet_id is None:
        raise NotFound("member", member_id)
    return wallet_id


def hold_in(
    session: Session,
    job_id: str,
    wallet_id: int,
    amount: int,
    *,
    ttl_s: float = DEFAULT_HOLD_TTL_S,
    actor: Actor = PIPELINE,
    known_new: bool = False,
) -> HoldResult:
    """Reserve ``amount`` of a member wallet's available credits for one job.

    The conditional UPDATE goes first: if the member is short, InsufficientCredits is
    raised and nothing is written, so a caller can park the job in the same transaction.
    A second hold for the same job replays the first (same amount) or is an
    IdempotencyConflict (another amount). ``known_new``: the caller holds the job's row
    lock and knows it has no hold yet (the pipeline), so there is nothing to look up.
    """
    job_id = check_key(job_id, "job_id")
    amount = check_amount(amount)
    require_pipeline(actor, "hold credits")
    existing = None if known_new else _find(session, wallet_id, job_id)
    if existing is not None:
        if existing.amount != amount:
            raise IdempotencyConflict(
                f"job {job_id!r} already holds {existing.amount} credits on wallet "
                f"{wallet_id}; this request asks {amount}"
            )
        return _replayed(session, existing)
    _txn, after = post(
        session,
        [
            Leg(wallet_id, Bucket.AVAILABLE, -amount, True),
            Leg(wallet_id, Bucket.HELD, amount, True),
        ],
        kind=TxnKind.HOLD.value,
        amount=amount,
        debit_wallet_id=wallet_id,
        credit_wallet_id=wallet_id,
        actor=str(actor),
        job_id=job_id,
    )
    now = utcnow()
    # uq_holds_wallet_id_job_id decides a race between two deliveries of one job.
    session.connection().execute(
        _INSERT_HOLD,
        {
            "job_id": job_id,
            "wallet_id": wallet_id,
            "amount": amount,
            "state": HoldState.HELD.value,
            "created_at": now,
            "expires_at": now + timedelta(seconds=ttl_s),
        },
    )
    return HoldResult(job_id, wallet_id, amount, HoldState.HELD.value, False, **after[wallet_id])


def resolve_in(
    session: Session, job_id: str, wallet_id: int, outcome: HoldState, *, actor: Actor = PIPELINE
) -> HoldResult:
    """Capture or release a job's hold exactly once.

    The state change is ``UPDATE ... WHERE state = 'held'``: of two racing resolutions only
    one sees the row, and the loser replays the winner's outcome or is refused.
    """
    if outcome not in (HoldState.CAPTURED, HoldState.RELEASED):
        raise InvalidRequest(f"a hold resolves to captured or released, not {outcome}")
    require_pipeline(actor, f"mark holds {outcome}")
    row = (
        session.connection()
        .execute(
            _RESOLVE,
            {"w": wallet_id, "j": job_id, "to": outcome.value, "at": utcnow()},
        )
        .one_or_none()
    )
    if row is None:
        hold = _find(session, wallet_id, job_id)
        if hold is None:
            raise NotFound("hold for job", job_id)
        if hold.state != outcome.value:
            raise HoldAlreadyResolved(job_id, hold.state, outcome.value)
        return _replayed(session, hold)
    amount = row.amount
    if outcome == HoldState.CAPTURED:
        target = Leg(system_wallet_id(session, WalletKind.SPENT), Bucket.AVAILABLE, amount, False)
    else:
        target = Leg(wallet_id, Bucket.AVAILABLE, amount, True)
    kind = TxnKind.CAPTURE if outcome == HoldState.CAPTURED else TxnKind.RELEASE
    _txn, after = post(
        session,
        [Leg(wallet_id, Bucket.HELD, -amount, True), target],
        kind=kind.value,
        amount=amount,
        debit_wallet_id=wallet_id,
        credit_wallet_id=target.wallet_id,
        actor=str(actor),
        job_id=job_id,
    )
    return HoldResult(job_id, wallet_id, amount, outcome.value, False, **after[wallet_id])


def _find(session: Session, wallet_id: int, job_id: str) -> Hold | None:
    return session.scalar(
        select(Hold)
        .where(Hold.wallet_id == wallet_id, Hold.job_id == job_id)
        .execution_options(populate_existing=True)
    )


def _replayed(session: Session, hold: Hold) -> HoldResult:
    wallet = session.execute(
        select(Wallet.available, Wallet.held).where(Wallet.id == hold.wallet_id)
    ).one()
    return HoldResult(
        hold.job_id, hold.wallet_id, hold.amount, hold.state, True, wallet.available, wallet.held
    )


# ---------------------------------------------------------------- one unit of work each


def hold(db: Database, job_id: str, member_id: int, amount: int, **kwargs) -> HoldResult:
    def work(session: Session) -> HoldResult:
        return hold_in(session, job_id, member_wallet(session, member_id), amount, **kwargs)

    # Racing holds of one job: the loser breaks the UNIQUE hold, or finds the credits
    # spent by the winner's hold of the same job; either way it replays the winner.
    return run_idempotent(db, HOLD_CONSTRAINT, work)


def capture(db: Database, job_id: str, member_id: int, *, actor: Actor = PIPELINE) -> HoldResult:
    return _resolve(db, job_id, member_id, HoldState.CAPTURED, actor)


def release(db: Database, job_id: str, member_id: int, *, actor: Actor = PIPELINE) -> HoldResult:
    return _resolve(db, job_id, member_id, HoldState.RELEASED, actor)


def _resolve(db: Database, job_id: str, member_id: int, outcome: HoldState, actor: Actor):
    with db.unit_of_work() as session:
        result = resolve_in(session, job_id, member_wallet(session, member_id), outcome,
                            actor=actor)  # fmt: skip
        session.commit()
        return result
