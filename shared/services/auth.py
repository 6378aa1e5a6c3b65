"""Who may do what. Enforced in the services, so every entry point obeys the same rules.

- **support** (ops, through the CLI): everything on the directory and the books: top-ups,
  reconcile, dead letters, migrations. Support does not spend: holds are the pipeline's.
- the **pipeline** (the worker, acting for a job): holds, captures and releases; nobody
  else may, so nobody can free credits a vendor is still working on.
- an **owner** (a member whose role is ``owner``) acts for the whole account: allocates
  between the account pool and any of its workspaces, and to any member of the account;
- an **admin** acts for their workspace: allocates between the account pool and their
  own workspace, and between their workspace and its members; an admin may not take
  credits from an owner or from another admin;
- owners and admins read the whole account: pools, tree, every member's wallet and jobs;
- a **member** reads their own wallet and jobs, and nothing else.

For anyone but support, a row of another account does not exist: "not found" and "not
allowed" give the same answer there, so nobody can probe other accounts.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.errors import NotFound, PermissionDenied
from shared.models import Member, Role, Workspace


@dataclass(frozen=True)
class Actor:
    """The caller of a service: support, the pipeline, or a member acting with their role."""

    member_id: int | None = None
    system: str = "support"  # who acts when no member does: "support" or "pipeline"

    @property
    def is_support(self) -> bool:
        return self.member_id is None and self.system == "support"

    @property
    def is_pipeline(self) -> bool:
        return self.member_id is None and self.system == "pipeline"

    def __str__(self) -> str:
        return self.system if self.member_id is None else f"member:{self.member_id}"


SUPPORT = Actor()
PIPELINE = Actor(system="pipeline")


@dataclass(frozen=True)
class Scope:
    """The part of the directory a member's role reaches."""

    member_id: int
    workspace_id: int
    account_id: int
    role: str


def scope_of(session: Session, actor: Actor) -> Scope:
    """The acting member's place in the directory, read once per unit of work."""
    cache = session.info.setdefault("actor_scopes", {})
    if actor.member_id not in cache:
        row = session.execute(
            select(Member.id, Member.workspace_id, Workspace.account_id, Member.role)
            .join(Workspace, Workspace.id == Member.workspace_id)
            .where(Member.id == actor.member_id, Member.active.is_(True))
        ).one_or_none()
        if row is None:
            raise PermissionDenied(f"acting member {actor.member_id} does not exist")
        cache[actor.member_id] = Scope(*row)
    return cache[actor.member_id]


def hide_other_accounts(session: Session, actor: Actor | None, kind: str, key: object,
                        account_id: int) -> None:  # fmt: skip
    """NotFound, exactly as for a missing row, when ``account_id`` is not the actor's."""
    if actor is None or actor.member_id is None:
        return
    if scope_of(session, actor).account_id != account_id:
        raise NotFound(kind, key)


def require_support(session: Session, actor: Actor, action: str) -> None:
    if not actor.is_support:
        raise PermissionDenied(f"{actor} may not {action}: only support may")


def require_pipeline(actor: Actor, action: str) -> None:
    if not actor.is_pipeline:
        raise PermissionDenied(f"{actor} may not {action}: only the send pipeline may")


def can_manage_workspace(session: Session, actor: Actor, workspace: Workspace) -> bool:
    """Support manages everything; owners every workspace of their account; admins their own."""
    if actor.is_support:
        return True
    if actor.member_id is None:
        return False
    scope = scope_of(session, actor)
    if scope.account_id != workspace.account_id:
        return False
    if scope.role == Role.OWNER:
        return True
    return scope.role == Role.ADMIN and scope.workspace_id == workspace.id


def require_workspace_manager(
    session: Session, actor: Actor, workspace: Workspace, action: str
) -> None:
    if not can_manage_workspace(session, actor, workspace):
        raise PermissionDenied(
            f"{actor} may not {action}: it needs support, an owner of account "
            f"{workspace.account_id} or an admin of workspace {workspace.id}"
        )


def require_owner(session: Session, actor: Actor, account_id: int, action: str) -> None:
    """Support, or an owner of this account."""
    if actor.is_support:
        return
    if actor.member_id is not None:
        scope = scope_of(session, actor)
        if scope.account_id == account_id and scope.role == Role.OWNER:
            return
    raise PermissionDenied(
        f"{actor} may not {action}: it needs support or an owner of account {account_id}"
    )


def require_may_reclaim_from(session: Session, actor: Actor, member_id: int) -> None:
    """Admins manage their workspace's members, but not its owners or other admins."""
    if actor.member_id is None or actor.member_id == member_id:
        return
    if scope_of(session, actor).role != Role.ADMIN:
        return
    role = session.scalar(select(Member.role).where(Member.id == member_id))
    if role in (Role.OWNER, Role.ADMIN):
        raise PermissionDenied(
            f"{actor} may not take credits from member {member_id}, who is an {role}: "
            "only support or an owner may"
        )


def require_account_reader(session: Session, actor: Actor, account_id: int, what: str) -> None:
    """Owners and admins of an account may read its pool and tree; members may not."""
    if actor.is_support:
        return
    if actor.member_id is not None:
        scope = scope_of(session, actor)
        if scope.account_id == account_id and scope.role in (Role.OWNER, Role.ADMIN):
            return
    raise PermissionDenied(f"{actor} may not read {what}: members read only their own wallet")


def require_member_reader(session: Session, actor: Actor, member: Member, workspace: Workspace):
    """A member reads their own wallet; the account's owners and admins read every member
    of the account (the same people who may read its tree)."""
    if actor.is_support or actor.member_id == member.id:
        return
    if actor.member_id is not None:
        scope = scope_of(session, actor)
        if scope.account_id == workspace.account_id and scope.role in (Role.OWNER, Role.ADMIN):
            return
    raise PermissionDenied(f"{actor} may not read member {member.id}'s wallet")
