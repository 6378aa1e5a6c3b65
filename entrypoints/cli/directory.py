"""Accounts, workspaces and members: create, list, rename, change roles, deactivate."""

from __future__ import annotations

import click

from entrypoints.cli import render
from entrypoints.cli.app import ID, Context, Output, cli, command_options
from shared.services import directory

KEY_HELP = "Idempotency key: running the command again with it creates nothing new."


def _listing(name: str, rows: list[dict], columns: tuple[str, ...]) -> Output:
    return Output(
        {name: rows},
        lambda out, data: render.rows(out, columns, ([r[c] for c in columns] for r in data[name])),
    )


@cli.group()
def account() -> None:
    """Accounts: the customer organisations that buy credits."""


@account.command("create")
@click.argument("name")
@click.option("--credits", "initial", type=click.IntRange(0), default=0,
              help="Top up this many at once, in the same transaction.")  # fmt: skip
@click.option("--key", help=KEY_HELP)
@command_options
def account_create(ctx: Context, name: str, initial: int, key: str | None) -> Output:
    """Create an account (support only), optionally with an initial top-up.

    \b
    Example: credits account create Acme --credits 500 --key crm-acme
    """
    created = directory.create_account(ctx.db(), name, credits=initial, key=key, actor=ctx.actor)
    return Output(created.as_dict() | {"available": initial})


@cli.command("accounts")
@command_options
def accounts_cmd(ctx: Context) -> Output:
    """List accounts with their pools (support: all; anyone else: their own).

    \b
    Example: credits accounts
    """
    found = directory.list_accounts(ctx.db(), actor=ctx.actor)
    return _listing("accounts", found, ("id", "name", "available"))


@cli.group()
def workspace() -> None:
    """Workspaces ("teams") of an account."""


@workspace.command("create")
@click.argument("account_id", type=ID)
@click.argument("name")
@click.option("--key", help=KEY_HELP)
@command_options
def workspace_create(ctx: Context, account_id: int, name: str, key: str | None) -> Output:
    """Create a workspace under an account (support or an owner).

    \b
    Example: credits workspace create 1 Sales
    """
    created = directory.create_workspace(ctx.db(), account_id, name, key=key, actor=ctx.actor)
    return Output(created.as_dict())


@cli.command("workspaces")
@click.argument("account_id", type=ID)
@command_options
def workspaces_cmd(ctx: Context, account_id: int) -> Output:
    """List an account's workspaces with their unassigned credits.

    \b
    Example: credits workspaces 1
    """
    found = directory.list_workspaces(ctx.db(), account_id, actor=ctx.actor)
    return _listing("workspaces", found, ("id", "name", "available"))


@cli.group()
def member() -> None:
    """Members of a workspace; each has their own wallet."""


@member.command("add")
@click.argument("workspace_id", type=ID)
@click.argument("name")
@click.option("--role", type=click.Choice(directory.ROLES), default="member", show_default=True)
@click.option("--key", help=KEY_HELP)
@command_options
def member_add(ctx: Context, workspace_id: int, name: str, role: str, key: str | None) -> Output:
    """Add a member to a workspace.

    \b
    Example: credits member add 1 James --role admin
    """
    created = directory.add_member(
        ctx.db(), workspace_id, name, role=role, key=key, actor=ctx.actor
    )
    return Output(created.as_dict() | {"role": role})


@member.command("rename")
@click.argument("member_id", type=ID)
@click.argument("name")
@command_options
def member_rename(ctx: Context, member_id: int, name: str) -> Output:
    """Rename a member.

    \b
    Example: credits member rename 3 "James Lee"
    """
    return Output(directory.rename(ctx.db(), "member", member_id, name, actor=ctx.actor))


@member.command("role")
@click.argument("member_id", type=ID)
@click.argument("role", type=click.Choice(directory.ROLES), metavar="ROLE")
@command_options
def member_role(ctx: Context, member_id: int, role: str) -> Output:
    """Change a member's role (support or an owner of the account).

    \b
    Example: credits member role 3 admin
    """
    return Output(directory.set_role(ctx.db(), member_id, role, actor=ctx.actor))


@member.command("deactivate")
@click.argument("member_id", type=ID)
@command_options
def member_deactivate(ctx: Context, member_id: int) -> Output:
    """Deactivate a member: their credits go back to the workspace pool, their parked
    jobs are cancelled, and they can no longer act or spend.

    \b
    Example: credits member deactivate 3
    """
    from entrypoints.cli.jobs import notify_outcomes

    with notify_outcomes(ctx) as notify:
        result = directory.deactivate(ctx.db(), member_id, actor=ctx.actor, notify=notify)
    return Output(result)


@cli.command("members")
@click.option("--account", "account_id", type=ID, help="Every member of this account.")
@click.option("--workspace", "workspace_id", type=ID, help="The members of this workspace.")
@click.option("--all", "include_inactive", is_flag=True, help="Include deactivated members.")
@command_options
def members_cmd(
    ctx: Context, account_id: int | None, workspace_id: int | None, include_inactive: bool
) -> Output:
    """List members with their role, available and held credits.

    \b
    Example: credits members --workspace 1
    """
    if (account_id is None) == (workspace_id is None):
        raise click.UsageError("give exactly one of --account or --workspace")
    found = directory.list_members(
        ctx.db(), account_id=account_id, workspace_id=workspace_id,
        include_inactive=include_inactive, actor=ctx.actor,
    )  # fmt: skip
    columns = ("id", "workspace_id", "name", "role", "available", "held")
    return _listing("members", found, columns + (("active",) if include_inactive else ()))


@cli.command("rename")
@click.argument("kind", type=click.Choice(["account", "workspace"]), metavar="KIND")
@click.argument("row_id", type=ID)
@click.argument("name")
@command_options
def rename_cmd(ctx: Context, kind: str, row_id: int, name: str) -> Output:
    """Rename an account or a workspace (support or an owner).

    \b
    Example: credits rename workspace 2 "Customer Success"
    """
    return Output(directory.rename(ctx.db(), kind, row_id, name, actor=ctx.actor))
