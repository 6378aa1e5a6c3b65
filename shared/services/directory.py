"""Accounts, workspaces and members: the tree that wallets hang from.

Creates take an optional idempotency key: a retry with the same key and request returns
the first result instead of creating a second row. Names are one line of printable text:
control characters (ESC, BEL, ...) are refused, so nothing stored can drive a terminal.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from shared.db import Database, UnitOfWork
from shared.errors import IdempotencyConflict, InvalidRequest, NotFound
from shared.models import (
    Account,
    IdempotentRequest,
    Member,
    Role,
    Wallet,
    WalletKind,
    Workspace,
)
from shared.services.auth import (
    SUPPORT,
    Actor,
    hide_other_accounts,
    require_account_reader,
    require_owner,
    require_support,
    require_workspace_manager,
    scope_of,
)
from shared.services.idempotency import check_key, request_hash, run_idempotent

if TYPE_CHECKING:
    from shared.services.jobs import Notify

MAX_NAME_LEN = 200
ROLES = tuple(r.value for r in Role)
T = TypeVar("T")


@dataclass(frozen=True)
class Created:
    id: int
    name: str
    wallet_id: int
    replayed: bool = False

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def clean_name(name: str, what: str) -> str:
    if not isinstance(name, str):
        raise InvalidRequest(f"{what} name must be text")
    bad = sorted({f"U+{ord(c):04X}" for c in name if unicodedata.category(c) in ("Cc", "Cf")
                  and c not in " \t"})  # fmt: skip
    if bad:
        raise InvalidRequest(f"{what} name must not contain control characters ({', '.join(bad)})")
    text = " ".join(name.split())
    if not text:
        raise InvalidRequest(f"{what} name must not be empty")
    if len(text) > MAX_NAME_LEN:
        raise InvalidRequest(f"{what} name is {len(text)} characters; the limit is {MAX_NAME_LEN}")
    return text


def check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidRequest(f"role {role!r} is not one of {', '.join(ROLES)}")
    return role


# ---------------------------------------------------------------- lookups


def get_account(session: Session, account_id: int, *, actor: Actor | None = None) -> Account:
    row = session.get(Account, account_id)
    if row is None:
        raise NotFound("account", account_id)
    hide_other_accounts(session, actor, "account", account_id, row.id)
    return row


def get_workspace(session: Session, workspace_id: int, *, actor: Actor | None = None) -> Workspace:
    row = session.get(Workspace, workspace_id)
    if row is None:
        raise NotFound("workspace", workspace_id)
    hide_other_accounts(session, actor, "workspace", workspace_id, row.account_id)
    return row


def get_member(session: Session, member_id: int, *, actor: Actor | None = None) -> Member:
    row = session.get(Member, member_id)
    if row is None:
        raise NotFound("member", member_id)
    if actor is not None:
        workspace = session.get(Workspace, row.workspace_id)
        hide_other_accounts(session, actor, "member", member_id, workspace.account_id)
    return row


def require_actor(db: Database, actor: Actor) -> None:
    """An acting member must exist and be active (the CLI's ``--as``, an API token)."""
    if actor.member_id is None:
        return
    with db.unit_of_work() as session:
        scope_of(session, actor)


# ---------------------------------------------------------------- keyed creates


def _keyed(
    db: Database,
    scope: Callable[[Session], str],
    key: str | None,
    digest: str,
    create: Callable[[UnitOfWork], Created],
) -> Created:
    """Run ``create`` once per (scope, key): a retry replays the first result."""
    key = check_key(key)

    def work(session: UnitOfWork) -> Created:
        where = scope(session)  # checks permissions before anything is replayed
        if key is not None:
            found = session.scalar(
                select(IdempotentRequest).where(
                    IdempotentRequest.scope == where, IdempotentRequest.key == key
                )
            )
            if found is not None:
                if found.request_hash != digest:
                    raise IdempotencyConflict(
                        f"idempotency key {key!r} was already used for a different request"
                    )
                return Created(**(found.result | {"replayed": True}))
        created = create(session)
        if key is not None:
            session.execute(
                insert(IdempotentRequest).values(
                    scope=where, key=key, request_hash=digest, result=created.as_dict()
                )
            )
        return created

    return run_idempotent(db, "uq_idempotent_requests_scope_key", work, replay_refusals=False)


def _new_wallet(session: Session, kind: WalletKind) -> int:
    return session.execute(
        insert(Wallet).values(kind=kind.value, available=0, held=0).returning(Wallet.id)
    ).scalar_one()


def create_account(
    db: Database, name: str, *, credits: int = 0, key: str | None = None, actor: Actor = SUPPORT
) -> Created:
    """Create an account, with an initial top-up in the same transaction if ``credits``."""
    from shared.services.ledger import topup_in

    name = clean_name(name, "account")

    def scope(session: Session) -> str:
        require_support(session, actor, "create accounts")
        return "support:accounts"

    def create(session: UnitOfWork) -> Created:
        wallet_id = _new_wallet(session, WalletKind.ACCOUNT)
        account_id = session.execute(
            insert(Account).values(name=name, wallet_id=wallet_id).returning(Account.id)
        ).scalar_one()
        if credits:
            # No key of its own: it is part of the keyed create, in the same transaction.
            topup_in(session, account_id, credits, key=None, actor=actor)
        return Created(account_id, name, wallet_id)

    digest = request_hash(op="account", name=name, credits=credits)
    return _keyed(db, scope, key, digest, create)


def create_workspace(
    db: Database, account_id: int, name: str, *, key: str | None = None, actor: Actor = SUPPORT
) -> Created:
    name = clean_name(name, "workspace")

    def scope(session: Session) -> str:
        get_account(session, account_id, actor=actor)
        require_owner(session, actor, account_id, "create workspaces")
        return f"account:{account_id}"

    def create(session: UnitOfWork) -> Created:
        wallet_id = _new_wallet(session, WalletKind.WORKSPACE)
        workspace_id = session.execute(
            insert(Workspace)
            .values(account_id=account_id, name=name, wallet_id=wallet_id)
            .returning(Workspace.id)
        ).scalar_one()
        return Created(workspace_id, name, wallet_id)

    digest = request_hash(op="workspace", account=account_id, name=name)
    return _keyed(db, scope, key, digest, create)


def add_member(
    db: Database,
    workspace_id: int,
    name: str,
    *,
    role: str = Role.MEMBER.value,
    key: str | None = None,
    actor: Actor = SUPPORT,
) -> Created:
    name = clean_name(name, "member")
    role = check_role(role)

    def scope(session: Session) -> str:
        workspace = get_workspace(session, workspace_id, actor=actor)
        require_workspace_manager(session, actor, workspace, "add members")
        if role == Role.OWNER:
            require_owner(session, actor, workspace.account_id, "add owners")
        return f"workspace:{workspace_id}"

    def create(session: UnitOfWork) -> Created:
        wallet_id = _new_wallet(session, WalletKind.MEMBER)
        member_id = session.execute(
            insert(Member)
            .values(workspace_id=workspace_id, name=name, role=role, wallet_id=wallet_id)
            .returning(Member.id)
        ).scalar_one()
        return Created(member_id, name, wallet_id)

    digest = request_hash(op="member", workspace=workspace_id, name=name, role=role)
    return _keyed(db, scope, key, digest, create)


# ---------------------------------------------------------------- changes


def _managed_member(session: Session, member_id: int, actor: Actor, action: str) -> Member:
    """A member the actor may change: admins manage their workspace's plain members;
    an owner or another admin is changed only by support or an owner."""
    member = get_member(session, member_id, actor=actor)
    workspace = get_workspace(session, member.workspace_id)
    require_workspace_manager(session, actor, workspace, action)
    if member.role != Role.MEMBER and actor.member_id != member.id:
        require_owner(session, actor, workspace.account_id, action)
    return member


def rename(db: Database, kind: str, row_id: int, name: str, *, actor: Actor = SUPPORT) -> dict:
    """Rename an account (support), a workspace (its owners) or a member (their managers)."""
    name = clean_name(name, kind)
    with db.unit_of_work() as session:
        if kind == "account":
            row = get_account(session, row_id, actor=actor)
            require_owner(session, actor, row.id, "rename the account")
        elif kind == "workspace":
            row = get_workspace(session, row_id, actor=actor)
            require_owner(session, actor, row.account_id, "rename workspaces")
        elif kind == "member":
            row = _managed_member(session, row_id, actor, "rename members")
        else:
            raise InvalidRequest(f"rename an account, a workspace or a member, not {kind!r}")
        row.name = name
        session.commit()
        return {"kind": kind, "id": row_id, "name": name}


def set_role(db: Database, member_id: int, role: str, *, actor: Actor = SUPPORT) -> dict:
    """Change a member's role: support or an owner of the account."""
    role = check_role(role)
    with db.unit_of_work() as session:
        member = get_member(session, member_id, actor=actor)
        workspace = get_workspace(session, member.workspace_id)
        require_owner(session, actor, workspace.account_id, f"make members {role}s")
        if member.role == Role.OWNER and role != Role.OWNER:
            owners = session.scalar(
                select(func.count(Member.id))
                .join(Workspace, Workspace.id == Member.workspace_id)
                .where(Workspace.account_id == workspace.account_id)
                .where(Member.role == Role.OWNER.value, Member.active.is_(True))
            )
            if owners <= 1:
                raise InvalidRequest(
                    f"member {member_id} is the last owner of account {workspace.account_id}"
                )
        before, member.role = member.role, role
        session.commit()
        return {"id": member_id, "name": member.name, "role": role, "was": before}


def deactivate(
    db: Database, member_id: int, *, actor: Actor = SUPPORT, notify: Notify | None = None
) -> dict:
    """Deactivate a member: their available credits go back to the workspace pool, their
    parked jobs are cancelled (``notify`` tells each one's flow engine), and they can no
    longer act or spend. A member with credits held by jobs in flight is refused until
    those jobs settle."""
    from shared.services.jobs import cancel_parked_in
    from shared.services.ledger import reclaim_all_in

    with db.unit_of_work() as session:
        member = _managed_member(session, member_id, actor, "deactivate members")
        if not member.active:
            return {"id": member_id, "active": False, "returned": 0, "replayed": True}
        wallet = session.get(Wallet, member.wallet_id, with_for_update=True)
        if wallet.held:
            raise InvalidRequest(
                f"member {member_id} has {wallet.held} credits held by jobs in flight: "
                "deactivate them once those jobs have settled"
            )
        cancelled = cancel_parked_in(session, member_id, "member deactivated", notify)
        returned = reclaim_all_in(session, member, actor=actor)
        member.active = False
        session.commit()
        return {"id": member_id, "active": False, "returned": returned,
                "jobs_cancelled": cancelled, "replayed": False}  # fmt: skip


# ---------------------------------------------------------------- listings


def list_accounts(db: Database, *, actor: Actor = SUPPORT) -> list[dict[str, Any]]:
    with db.unit_of_work() as session:
        query = select(Account.id, Account.name, Wallet.available).join(
            Wallet, Wallet.id == Account.wallet_id
        )
        if actor.member_id is not None:
            query = query.where(Account.id == scope_of(session, actor).account_id)
        rows = session.execute(query.order_by(Account.id)).all()
        return [{"id": r.id, "name": r.name, "available": r.available} for r in rows]


def list_workspaces(db: Database, account_id: int, *, actor: Actor = SUPPORT) -> list[dict]:
    with db.unit_of_work() as session:
        get_account(session, account_id, actor=actor)
        require_account_reader(session, actor, account_id, f"account {account_id}'s workspaces")
        rows = session.execute(
            select(Workspace.id, Workspace.name, Wallet.available)
            .join(Wallet, Wallet.id == Workspace.wallet_id)
            .where(Workspace.account_id == account_id)
            .order_by(Workspace.id)
        ).all()
        return [{"id": r.id, "name": r.name, "available": r.available} for r in rows]


def list_members(
    db: Database,
    *,
    account_id: int | None = None,
    workspace_id: int | None = None,
    include_inactive: bool = False,
    actor: Actor = SUPPORT,
) -> list[dict[str, Any]]:
    """Members with their role and balances, of one workspace or a whole account."""
    if (account_id is None) == (workspace_id is None):
        raise InvalidRequest("give exactly one of an account or a workspace")
    with db.unit_of_work() as session:
        if workspace_id is not None:
            workspace = get_workspace(session, workspace_id, actor=actor)
            account_id = workspace.account_id
        else:
            get_account(session, account_id, actor=actor)
        require_account_reader(session, actor, account_id, f"account {account_id}'s members")
        query = (
            select(Member, Wallet.available, Wallet.held)
            .join(Wallet, Wallet.id == Member.wallet_id)
            .join(Workspace, Workspace.id == Member.workspace_id)
            .where(Workspace.account_id == account_id)
            .order_by(Member.id)
        )
        if workspace_id is not None:
            query = query.where(Member.workspace_id == workspace_id)
        if not include_inactive:
            query = query.where(Member.active.is_(True))
        return [
            {"id": m.id, "workspace_id": m.workspace_id, "name": m.name, "role": m.role,
             "active": m.active, "available": available, "held": held}
            for m, available, held in session.execute(query)
        ]  # fmt: skip
