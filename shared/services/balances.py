"""Reading balances: one wallet, an account's whole tree with totals, and paged history.

Reads obey the same role rules as writes: members read only their own wallet.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db import Database
from shared.errors import InvalidRequest
from shared.models import Account, LedgerEntry, LedgerTransaction, Member, Wallet, Workspace
from shared.services.auth import (
    SUPPORT,
    Actor,
    require_account_reader,
    require_member_reader,
)
from shared.services.directory import get_account, get_member, get_workspace

MAX_HISTORY_PAGE = 500


@dataclass(frozen=True)
class Balance:
    kind: str
    id: int
    name: str
    wallet_id: int
    available: int
    held: int

    @property
    def total(self) -> int:
        return self.available + self.held

    def as_dict(self) -> dict[str, object]:
        return asdict(self) | {"total": self.total}


def _owner(session: Session, kind: str, owner_id: int, actor: Actor):
    getters = {"account": get_account, "workspace": get_workspace, "member": get_member}
    if kind not in getters:
        raise InvalidRequest(f"balances belong to an account, workspace or member, not {kind!r}")
    return getters[kind](session, owner_id, actor=actor)


def _require_reader(session: Session, actor: Actor, kind: str, row) -> None:
    if kind == "account":
        require_account_reader(session, actor, row.id, f"account {row.id}'s pool")
    elif kind == "workspace":
        require_account_reader(session, actor, row.account_id, f"workspace {row.id}'s pool")
    else:
        require_member_reader(session, actor, row, get_workspace(session, row.workspace_id))


def balance(db: Database, kind: str, owner_id: int, *, actor: Actor = SUPPORT) -> Balance:
    with db.unit_of_work() as session:
        row = _owner(session, kind, owner_id, actor)
        _require_reader(session, actor, kind, row)
        wallet = session.get(Wallet, row.wallet_id)
        return Balance(kind, row.id, row.name, wallet.id, wallet.available, wallet.held)


def tree(db: Database, account_id: int, *, actor: Actor = SUPPORT) -> dict[str, object]:
    """The account pool, each workspace pool, each member, and the totals, in one snapshot."""
    with db.unit_of_work() as session:
        account = get_account(session, account_id, actor=actor)
        require_account_reader(session, actor, account_id, f"account {account_id}'s tree")
        wallets = _wallets_of_account(session, account)
        pool = wallets[account.wallet_id]
        workspaces = []
        totals = {"account_pool": pool.available, "workspace_pools": 0, "members_available": 0}
        totals["members_held"] = 0
        for ws in session.scalars(
            select(Workspace).where(Workspace.account_id == account_id).order_by(Workspace.id)
        ):
            ws_wallet = wallets[ws.wallet_id]
            members = []
            for m in session.scalars(
                select(Member)
                .where(Member.workspace_id == ws.id, Member.active.is_(True))
                .order_by(Member.id)
            ):
                mw = wallets[m.wallet_id]
                members.append(
                    Balance("member", m.id, m.name, mw.id, mw.available, mw.held).as_dict()
                    | {"role": m.role}
                )
                totals["members_available"] += mw.available
                totals["members_held"] += mw.held
            totals["workspace_pools"] += ws_wallet.available
            workspaces.append(
                Balance("workspace", ws.id, ws.name, ws_wallet.id, ws_wallet.available, 0).as_dict()
                | {"members": members}
            )
        totals["total"] = sum(totals.values())
        return {
            "account": Balance(
                "account", account.id, account.name, pool.id, pool.available, 0
            ).as_dict(),
            "workspaces": workspaces,
            "totals": totals,
        }


def _wallets_of_account(session: Session, account: Account) -> dict[int, Wallet]:
    ws_wallets = select(Workspace.wallet_id).where(Workspace.account_id == account.id)
    member_wallets = (
        select(Member.wallet_id)
        .join(Workspace, Workspace.id == Member.workspace_id)
        .where(Workspace.account_id == account.id)
    )
    rows = session.scalars(
        select(Wallet).where(
            (Wallet.id == account.wallet_id)
            | Wallet.id.in_(ws_wallets)
            | Wallet.id.in_(member_wallets)
        )
    )
    return {w.id: w for w in rows}


def history(
    db: Database,
    kind: str,
    owner_id: int,
    *,
    limit: int = 50,
    before: int | None = None,
    actor: Actor = SUPPORT,
) -> dict[str, object]:
    """One page of a wallet's entries, newest first; ``next_before`` fetches the next page."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_HISTORY_PAGE:
        raise InvalidRequest(f"limit must be from 1 to {MAX_HISTORY_PAGE}, got {limit!r}")
    with db.unit_of_work() as session:
        row = _owner(session, kind, owner_id, actor)
        _require_reader(session, actor, kind, row)
        query = (
            select(LedgerEntry, LedgerTransaction)
            .join(LedgerTransaction, LedgerTransaction.id == LedgerEntry.transaction_id)
            .where(LedgerEntry.wallet_id == row.wallet_id)
            .order_by(LedgerEntry.id.desc())
            .limit(limit + 1)
        )
        if before is not None:
            query = query.where(LedgerEntry.id < before)
        rows = session.execute(query).all()
        page = rows[:limit]
        names = _member_names(session, [txn.actor for _entry, txn in page])
        entries = [
            {
                "entry_id": entry.id,
                "transaction_id": txn.id,
                "kind": txn.kind,
                "bucket": entry.bucket,
                "amount": entry.amount,
                "balance_after": entry.balance_after,
                "job_id": txn.job_id,
                "actor": txn.actor,
                "by": _by(txn, names),
                "at": entry.created_at.isoformat(),
            }
            for entry, txn in page
        ]
        next_before = page[-1][0].id if len(rows) > limit else None
        return {
            "kind": kind,
            "id": owner_id,
            "wallet_id": row.wallet_id,
            "entries": entries,
            "next_before": next_before,
        }


def _member_names(session: Session, actors: list[str]) -> dict[int, str]:
    ids = {int(a.split(":", 1)[1]) for a in actors if a.startswith("member:")}
    if not ids:
        return {}
    return dict(session.execute(select(Member.id, Member.name).where(Member.id.in_(ids))).all())


def _by(txn: LedgerTransaction, names: dict[int, str]) -> str:
    """Who did it, for people: support, a member by name, or the pipeline for a job."""
    if txn.actor.startswith("member:"):
        member_id = int(txn.actor.split(":", 1)[1])
        return f"{names.get(member_id, 'member')} (member {member_id})"
    if txn.actor == "pipeline" and txn.job_id:
        return f"pipeline for job {txn.job_id}"
    return txn.actor
