"""Who may do what. Enforced in the services, so every entry point obeys the same rules.

- support (ops, the CLI by default, the worker): everything;
- an **owner** (a member whose role is ``owner``) acts for the whole account: allocates
  between the account pool and any of its workspaces, and to any member of the account;
- an **admin** acts for their workspace: allocates between the account pool and their
  own workspace, and between their workspace and its members;
- owners and admins read the whole account: pools, tree, every member's wallet and jobs;
- a **member** reads their own wallet and jobs, and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from shared.errors import PermissionDenied
from shared.models import Member, Role, Workspace


@dataclass(frozen=True)
class Actor:
    """The caller of a service: support, or a member acting with their role."""

    member_id: int | None = None

    @property
    def is_support(self) -> bool:
        return self.member_id is None

    def __str__(self) -> str:
        return "support" if self.is_support else f"member:{self.member_id}"


SUPPORT = Actor()


@dataclass(frozen=True)
class Scope:
    """The part of the directory an actor's role reaches."""

    member: Member
    account_id: int

    @property
    def role(self) -> str:
        return self.member.role


def _scope(session: Session, actor: Actor) -> Scope:
    member = session.get(Member, actor.member_id)
    if member is None:
        raise PermissionDenied(f"acting member {actor.member_id} does not exist")
    workspace = session.get(Workspace, member.workspace_id)
    return Scope(member, workspace.account_id)


def require_support(session: Session, actor: Actor, action: str) -> None:
    if not actor.is_support:
        raise PermissionDenied(f"{actor} may not {action}: only support may")


def can_manage_workspace(session: Session, actor: Actor, workspace: Workspace) -> bool:
    """Owners manage every workspace of their account; admins manage their own."""
    if actor.is_support:
        return True
    scope = _scope(session, actor)
    if scope.account_id != workspace.account_id:
        return False
    if scope.role == Role.OWNER:
        return True
    return scope.role == Role.ADMIN and scope.member.workspace_id == workspace.id


def require_workspace_manager(
    session: Session, actor: Actor, workspace: Workspace, action: str
) -> None:
    if not can_manage_workspace(session, actor, workspace):
        raise PermissionDenied(
            f"{actor} may not {action}: it needs support, an owner of account "
            f"{workspace.account_id} or an admin of workspace {workspace.id}"
        )


def require_account_reader(session: Session, actor: Actor, account_id: int, what: str) -> None:
    """Owners and admins of an account may read its pool and tree; members may not."""
    if actor.is_support:
        return
    scope = _scope(session, actor)
    if scope.account_id == account_id and scope.role in (Role.OWNER, Role.ADMIN):
        return
    raise PermissionDenied(f"{actor} may not read {what}: members read only their own wallet")


def require_member_reader(session: Session, actor: Actor, member: Member, workspace: Workspace):
    """A member reads their own wallet; the account's owners and admins read every member
    of the account (the same people who may read its tree)."""
    if actor.is_support or actor.member_id == member.id:
        return
    scope = _scope(session, actor)
    if scope.account_id == workspace.account_id and scope.role in (Role.OWNER, Role.ADMIN):
        return
    raise PermissionDenied(f"{actor} may not read member {member.id}'s wallet")
