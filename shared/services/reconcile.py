"""Reconcile: prove the four ledger invariants of DESIGN.md and report any drift.

1. ``available >= 0`` and ``held >= 0`` for every non-system wallet;
2. every wallet's stored balances equal the sum of its ledger entries;
3. ``held`` equals the sum of that wallet's open holds;
4. all entries sum to zero, and so does every single transaction.

Each check is one aggregate query, so the report is cheap enough to run on a schedule.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from shared.db import Database
from shared.models import (
    FINAL_JOB_STATUSES,
    SYSTEM_WALLETS,
    Hold,
    HoldState,
    Job,
    LedgerEntry,
    Member,
    Wallet,
    WalletKind,
)

MAX_PROBLEMS = 1_000  # a broken ledger can fail every row; the report stays readable


@dataclass(frozen=True)
class Drift:
    invariant: str
    message: str
    wallet_id: int | None = None
    expected: int | None = None
    actual: int | None = None

    def __post_init__(self) -> None:
        # PostgreSQL's SUM over BIGINT is NUMERIC (a Decimal in Python): credits are
        # integers everywhere else, in JSON too.
        for name in ("expected", "actual"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, int(value))

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class ReconcileReport:
    problems: list[Drift] = field(default_factory=list)
    figures: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "problems": [p.as_dict() for p in self.problems],
            "figures": self.figures,
        }


def reconcile(db: Database) -> ReconcileReport:
    with db.unit_of_work() as session:
        return reconcile_in(session)


def reconcile_in(session: Session) -> ReconcileReport:
    report = ReconcileReport()
    report.problems.extend(_negative_wallets(session))
    report.problems.extend(_balances_vs_entries(session))
    report.problems.extend(_held_vs_open_holds(session))
    report.problems.extend(_unbalanced(session))
    report.problems.extend(_holds_of_finished_jobs(session))
    del report.problems[MAX_PROBLEMS:]
    report.figures = _figures(session)
    return report


def _negative_wallets(session: Session) -> list[Drift]:
    rows = session.execute(
        select(Wallet.id, Wallet.available, Wallet.held)
        .where(Wallet.kind.not_in([k.value for k in SYSTEM_WALLETS]))
        .where((Wallet.available < 0) | (Wallet.held < 0))
        .limit(MAX_PROBLEMS)
    )
    return [
        Drift(
            "non_negative",
            f"wallet {r.id} is negative: available {r.available}, held {r.held}",
            r.id,
            0,
            min(r.available, r.held),
        )
        for r in rows
    ]


def _balances_vs_entries(session: Session) -> list[Drift]:
    sums = (
        select(
            LedgerEntry.wallet_id.label("wallet_id"),
            func.sum(case((LedgerEntry.bucket == "available", LedgerEntry.amount), else_=0)).label(
                "available"
            ),
            func.sum(case((LedgerEntry.bucket == "held", LedgerEntry.amount), else_=0)).label(
                "held"
            ),
        )
        .group_by(LedgerEntry.wallet_id)
        .subquery()
    )
    rows = session.execute(
        select(
            Wallet.id,
            Wallet.available,
            Wallet.held,
            func.coalesce(sums.c.available, 0).label("sum_available"),
            func.coalesce(sums.c.held, 0).label("sum_held"),
        )
        .outerjoin(sums, sums.c.wallet_id == Wallet.id)
        .where(
            (Wallet.available != func.coalesce(sums.c.available, 0))
            | (Wallet.held != func.coalesce(sums.c.held, 0))
        )
        .limit(MAX_PROBLEMS)
    )
    problems = []
    for r in rows:
        for bucket, stored, summed in (
            ("available", r.available, r.sum_available),
            ("held", r.held, r.sum_held),
        ):
            if stored != summed:
                problems.append(
                    Drift(
                        "balance_equals_entries",
                        f"wallet {r.id} {bucket} is {stored} but its entries sum to {summed}",
                        r.id,
                        summed,
                        stored,
                    )
                )
    return problems


def _held_vs_open_holds(session: Session) -> list[Drift]:
    open_sums = (
        select(Hold.wallet_id.label("wallet_id"), func.sum(Hold.amount).label("held"))
        .where(Hold.state == HoldState.HELD.value)
        .group_by(Hold.wallet_id)
        .subquery()
    )
    rows = session.execute(
        select(Wallet.id, Wallet.held, func.coalesce(open_sums.c.held, 0).label("open_held"))
        .outerjoin(open_sums, open_sums.c.wallet_id == Wallet.id)
        .where(Wallet.held != func.coalesce(open_sums.c.held, 0))
        .limit(MAX_PROBLEMS)
    )
    return [
        Drift(
            "held_equals_open_holds",
            f"wallet {r.id} holds {r.held} but its open holds sum to {r.open_held}",
            r.id,
            r.open_held,
            r.held,
        )
        for r in rows
    ]


def _unbalanced(session: Session) -> list[Drift]:
    problems = []
    total = session.scalar(select(func.coalesce(func.sum(LedgerEntry.amount), 0)))
    if total != 0:
        problems.append(
            Drift("entries_sum_to_zero", f"all entries sum to {total}, not 0", None, 0, total)
        )
    rows = session.execute(
        select(LedgerEntry.transaction_id, func.sum(LedgerEntry.amount).label("total"))
        .group_by(LedgerEntry.transaction_id)
        .having(func.sum(LedgerEntry.amount) != 0)
        .limit(MAX_PROBLEMS)
    )
    problems.extend(
        Drift(
            "entries_sum_to_zero",
            f"transaction {r.transaction_id} entries sum to {r.total}, not 0",
            None,
            0,
            r.total,
        )
        for r in rows
    )
    return problems


def _holds_of_finished_jobs(session: Session) -> list[Drift]:
    """Beyond the four invariants: a hold still open on a job that is already final would
    never be resolved by anyone (the resolver looks at submitted jobs)."""
    rows = session.execute(
        select(Hold.job_id, Hold.wallet_id, Hold.amount, Job.status)
        .join(Member, Member.wallet_id == Hold.wallet_id)
        .join(Job, (Job.job_id == Hold.job_id) & (Job.member_id == Member.id))
        .where(Hold.state == HoldState.HELD.value)
        .where(Job.status.in_([s.value for s in FINAL_JOB_STATUSES]))
        .limit(MAX_PROBLEMS)
    )
    return [
        Drift(
            "no_open_hold_on_final_job",
            f"job {r.job_id} is {r.status} but still holds {r.amount} credits",
            r.wallet_id,
            0,
            r.amount,
        )
        for r in rows
    ]


def _figures(session: Session) -> dict[str, int]:
    by_kind = dict(
        session.execute(
            select(Wallet.kind, func.sum(Wallet.available + Wallet.held)).group_by(Wallet.kind)
        ).all()
    )
    open_holds = session.execute(
        select(func.count(Hold.id), func.coalesce(func.sum(Hold.amount), 0)).where(
            Hold.state == HoldState.HELD.value
        )
    ).one()
    return {
        "purchased": -int(by_kind.get(WalletKind.EXTERNAL.value) or 0),
        "spent": int(by_kind.get(WalletKind.SPENT.value) or 0),
        "account_pools": int(by_kind.get(WalletKind.ACCOUNT.value) or 0),
        "workspace_pools": int(by_kind.get(WalletKind.WORKSPACE.value) or 0),
        "member_wallets": int(by_kind.get(WalletKind.MEMBER.value) or 0),
        "open_holds": int(open_holds[0]),
        "open_held_credits": int(open_holds[1]),
        "entries": int(session.scalar(select(func.count(LedgerEntry.id))) or 0),
    }
