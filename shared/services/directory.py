"""Accounts, workspaces and members: the tree that wallets hang from."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TypeVar

from sqlalchemy.orm import Session

from shared.db import Database
from shared.errors import InvalidRequest, NotFound, PermissionDenied
from shared.models import Account, Member, Role, Wallet, WalletKind, Workspace
from shared.services.auth import SUPPORT, Actor, require_support, require_workspace_manager

MAX_NAME_LEN = 200
T = TypeVar("T")


@dataclass(frozen=True)
class Created:
    id: int
    name: str
    wallet_id: int

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def clean_name(name: str, what: str) -> str:
    if not isinstance(name, str):
        raise InvalidRequest(f"{what} name must be text")
    text = " ".join(name.split())
    if not text:
        raise InvalidRequest(f"{what} name must not be empty")
    if len(text) > MAX_NAME_LEN:
        raise InvalidRequest(f"{what} name is {len(text)} characters; the limit is {MAX_NAME_LEN}")
    return text


def _get(session: Session, model: type[T], kind: str, key: int) -> T:
    row = session.get(model, key)
    if row is None:
        raise NotFound(kind, key)
    return row


def get_account(session: Session, account_id: int) -> Account:
    return _get(session, Account, "account", account_id)


def get_workspace(session: Session, workspace_id: int) -> Workspace:
    return _get(session, Workspace, "workspace", workspace_id)


def get_member(session: Session, member_id: int) -> Member:
    return _get(session, Member, "member", member_id)


def _new_wallet(session: Session, kind: WalletKind) -> Wallet:
    wallet = Wallet(kind=kind.value, available=0, held=0)
    session.add(wallet)
    session.flush()
    return wallet


def create_account(db: Database, name: str, *, actor: Actor = SUPPORT) -> Created:
    name = clean_name(name, "account")
    with db.unit_of_work() as session:
        require_support(session, actor, "create accounts")
        wallet = _new_wallet(session, WalletKind.ACCOUNT)
        account = Account(name=name, wallet_id=wallet.id)
        session.add(account)
        session.flush()
        return Created(account.id, account.name, wallet.id)


def create_workspace(
    db: Database, account_id: int, name: str, *, actor: Actor = SUPPORT
) -> Created:
    name = clean_name(name, "workspace")
    with db.unit_of_work() as session:
        get_account(session, account_id)
        if not actor.is_support:
            member = session.get(Member, actor.member_id)
            owner_here = (
                member is not None
                and member.role == Role.OWNER
                and get_workspace(session, member.workspace_id).account_id == account_id
            )
            if not owner_here:
                raise PermissionDenied(
                    f"{actor} may not create workspaces: it needs support or an owner of "
                    f"account {account_id}"
                )
        wallet = _new_wallet(session, WalletKind.WORKSPACE)
        workspace = Workspace(account_id=account_id, name=name, wallet_id=wallet.id)
        session.add(workspace)
        session.flush()
        return Created(workspace.id, workspace.name, wallet.id)


def add_member(
    db: Database,
    workspace_id: int,
    name: str,
    *,
    role: str = Role.MEMBER.value,
    actor: Actor = SUPPORT,
) -> Created:
    name = clean_name(name, "member")
    if role not in {r.value for r in Role}:
        raise InvalidRequest(f"role {role!r} is not one of owner, admin, member")
    with db.unit_of_work() as session:
        workspace = get_workspace(session, workspace_id)
        require_workspace_manager(session, actor, workspace, "add members")
        if role == Role.OWNER and not actor.is_support:
            acting = get_member(session, actor.member_id)
            if acting.role != Role.OWNER:
                raise PermissionDenied(f"{actor} may not add owners: only support or an owner may")
        wallet = _new_wallet(session, WalletKind.MEMBER)
        member = Member(workspace_id=workspace_id, name=name, role=role, wallet_id=wallet.id)
        session.add(member)
        session.flush()
        return Created(member.id, member.name, wallet.id)
