"""The ``credits`` command line: admin work over the ledger, and the send client.

Every command takes ``--json`` and then prints exactly one JSON object on stdout; without
it, a readable table. Errors go to stderr with a non-zero exit code (see
``shared.errors``). The CLI acts as support unless ``--as MEMBER_ID`` is given, and then
the services' role rules apply.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.tree import Tree
from sqlalchemy.exc import OperationalError

from shared.config import Settings, load_settings
from shared.db import Database
from shared.errors import CreditsError, InvalidRequest, PermissionDenied
from shared.services.auth import SUPPORT, Actor

OWNER_OPTIONS = ("account", "workspace", "member")
# Row ids are BIGINT: a larger number is a usage error, not a driver OverflowError.
MAX_ID = 2**63 - 1
ID = click.IntRange(1, MAX_ID)


@dataclass
class Context:
    settings_overrides: dict[str, Any]
    as_json: bool = False
    actor: Actor = SUPPORT
    _db: Database | None = None

    @property
    def settings(self) -> Settings:
        return load_settings(**self.settings_overrides)

    def db(self, *, require_schema: bool = True) -> Database:
        if self._db is None:
            self._db = Database(self.settings.database_url)
            if require_schema:
                self._db.require_schema()
        return self._db


def _as_member(value: str | None) -> Actor | None:
    if value is None:
        return None
    if not value.isdecimal() or not 1 <= int(value) <= MAX_ID:
        raise click.BadParameter(f"--as takes a member id (a whole number), got {value!r}")
    return Actor(int(value))


def command_options(fn: Callable) -> Callable:
    """Add ``--json`` and ``--as`` to a command; either may also come before the command."""

    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
    @click.option("--as", "as_member", metavar="MEMBER_ID", help="Act as this member.")
    @click.pass_obj
    @wraps(fn)
    def wrapper(ctx: Context, *args: Any, as_json: bool, as_member: str | None, **kwargs: Any):
        ctx.as_json = ctx.as_json or as_json
        ctx.actor = _as_member(as_member) or ctx.actor
        result = fn(ctx, *args, **kwargs)
        emit(ctx, result)

    return wrapper


@dataclass
class Output:
    data: dict[str, Any]
    render: Callable[[Console, dict[str, Any]], None] | None = None


def emit(ctx: Context, result: Output) -> None:
    if ctx.as_json:
        click.echo(json.dumps(result.data, default=str))
        return
    console = Console()
    if result.render is not None:
        result.render(console, result.data)
    else:
        _render_mapping(console, result.data)


def _render_mapping(console: Console, data: dict[str, Any]) -> None:
    table = Table(show_header=False, box=None)
    for key, value in data.items():
        table.add_row(
            f"[bold]{key}[/bold]",
            json.dumps(value) if isinstance(value, dict | list) else str(value),
        )
    console.print(table)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--database-url", help="Overrides CREDITS_DATABASE_URL.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--as", "as_member", metavar="MEMBER_ID", help="Act as this member.")
@click.pass_context
def cli(click_ctx: click.Context, database_url: str | None, as_json: bool, as_member: str | None):
    """Credits: top up, allocate, spend and audit the platform's in-app currency."""
    overrides = {"database_url": database_url} if database_url else {}
    click_ctx.obj = Context(overrides, as_json, _as_member(as_member) or SUPPORT)


# ---------------------------------------------------------------- db


@cli.group()
def db() -> None:
    """Schema migrations."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@command_options
def db_upgrade(ctx: Context, revision: str) -> Output:
    """Create or migrate the schema (Alembic)."""
    from alembic.util import CommandError

    from shared.migrations import current, upgrade

    url = ctx.settings.database_url
    try:
        upgrade(url, revision)
    except CommandError as exc:
        raise InvalidRequest(f"cannot upgrade to revision {revision!r}: {exc}") from None
    return Output({"ok": True, "revision": current(url)})


# ---------------------------------------------------------------- directory


@cli.group()
def account() -> None:
    """Accounts: the customer organisations that buy credits."""


@account.command("create")
@click.argument("name")
@click.option("--credits", "initial", type=int, default=0, help="Top up this many at once.")
@command_options
def account_create(ctx: Context, name: str, initial: int) -> Output:
    """Create an account, optionally with an initial top-up."""
    from shared.services import directory, ledger

    if initial < 0:
        raise InvalidRequest(f"--credits must be zero or positive, got {initial}")
    database = ctx.db()
    created = directory.create_account(database, name, actor=ctx.actor)
    data = created.as_dict()
    if initial:
        # Keyed on the new account, so this step is idempotent on its own.
        ledger.topup(database, created.id, initial, key=f"initial:{created.id}", actor=ctx.actor)
    data["available"] = initial
    return Output(data)


@account.command("topup", context_settings={"ignore_unknown_options": True})
@click.argument("account_id", type=ID)
@click.argument("n", type=int)
@click.option("--key", help="Idempotency key: a retry with the same key changes nothing.")
@command_options
def account_topup(ctx: Context, account_id: int, n: int, key: str | None) -> Output:
    """Add N purchased credits to an account pool (support only)."""
    from shared.services import ledger

    return Output(ledger.topup(ctx.db(), account_id, n, key=key, actor=ctx.actor).as_dict())


@cli.group()
def workspace() -> None:
    """Workspaces ("teams") of an account."""


@workspace.command("create")
@click.argument("account_id", type=ID)
@click.argument("name")
@command_options
def workspace_create(ctx: Context, account_id: int, name: str) -> Output:
    """Create a workspace under an account."""
    from shared.services import directory

    return Output(directory.create_workspace(ctx.db(), account_id, name, actor=ctx.actor).as_dict())


@cli.group()
def member() -> None:
    """Members of a workspace; each has their own wallet."""


@member.command("add")
@click.argument("workspace_id", type=ID)
@click.argument("name")
@click.option("--role", type=click.Choice(["owner", "admin", "member"]), default="member")
@command_options
def member_add(ctx: Context, workspace_id: int, name: str, role: str) -> Output:
    """Add a member to a workspace."""
    from shared.services import directory

    created = directory.add_member(ctx.db(), workspace_id, name, role=role, actor=ctx.actor)
    return Output(created.as_dict() | {"role": role})


# ---------------------------------------------------------------- money


def _one_owner(options: dict[str, int | None], allowed: tuple[str, ...]) -> tuple[str, int]:
    given = [(kind, value) for kind, value in options.items() if value is not None]
    if len(given) != 1:
        names = " | ".join(f"--{k}" for k in allowed)
        raise click.UsageError(f"give exactly one of {names}")
    return given[0]


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option("--workspace", "workspace_id", type=ID, help="Allocate from the account pool.")
@click.option("--member", "member_id", type=ID, help="Allocate from the workspace pool.")
@click.argument("n", required=False)
@click.option("--set", "set_to", type=int, help="Move whatever makes the balance N.")
@click.option("--key", help="Idempotency key: a retry with the same key changes nothing.")
@command_options
def allocate(
    ctx: Context,
    workspace_id: int | None,
    member_id: int | None,
    n: str | None,
    set_to: int | None,
    key: str | None,
) -> Output:
    """Move N credits down from the parent pool; a negative N (or lower --set) reclaims."""
    from shared.services import ledger

    kind, target = _one_owner(
        {"workspace": workspace_id, "member": member_id}, ("workspace", "member")
    )
    if (n is None) == (set_to is None):
        raise click.UsageError("give exactly one of N or --set N")
    amount = None
    if n is not None:
        try:
            amount = int(n)
        except ValueError:
            raise click.BadParameter(f"{n!r} is not a whole number", param_hint="N") from None
    result = ledger.allocate(
        ctx.db(), kind, target, amount=amount, set_to=set_to, key=key, actor=ctx.actor
    )
    return Output(result.as_dict())


def owner_options(fn: Callable) -> Callable:
    for kind in reversed(OWNER_OPTIONS):
        fn = click.option(f"--{kind}", f"{kind}_id", type=ID, help=f"A {kind} id.")(fn)
    return fn


@cli.command()
@owner_options
@command_options
def balance(ctx: Context, account_id: int | None, workspace_id: int | None, member_id: int | None):
    """Show one wallet: available, held and total."""
    from shared.services import balances

    kind, owner = _one_owner(
        {"account": account_id, "workspace": workspace_id, "member": member_id}, OWNER_OPTIONS
    )
    return Output(balances.balance(ctx.db(), kind, owner, actor=ctx.actor).as_dict())


@cli.command("tree")
@click.argument("account_id", type=ID)
@command_options
def tree_cmd(ctx: Context, account_id: int) -> Output:
    """Show an account pool, its workspace pools, every member, and the totals."""
    from shared.services import balances

    return Output(balances.tree(ctx.db(), account_id, actor=ctx.actor), render_tree)


def render_tree(console: Console, data: dict[str, Any]) -> None:
    acct = data["account"]
    root = Tree(f"[bold]{acct['name']}[/bold] (account {acct['id']}) pool: {acct['available']}")
    for ws in data["workspaces"]:
        branch = root.add(
            f"[bold]{ws['name']}[/bold] (workspace {ws['id']}) unassigned: {ws['available']}"
        )
        for m in ws["members"]:
            branch.add(
                f"{m['name']} (member {m['id']}, {m['role']}) remaining: {m['available']}"
                + (f", held: {m['held']}" if m["held"] else "")
            )
    console.print(root)
    totals = Table("totals", "credits")
    for key, value in data["totals"].items():
        totals.add_row(key, str(value))
    console.print(totals)


@cli.command("history")
@owner_options
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@click.option("--before", type=ID, help="Page cursor: show entries older than this id.")
@command_options
def history_cmd(
    ctx: Context,
    account_id: int | None,
    workspace_id: int | None,
    member_id: int | None,
    limit: int,
    before: int | None,
) -> Output:
    """Show a wallet's ledger entries, newest first."""
    from shared.services import balances

    kind, owner = _one_owner(
        {"account": account_id, "workspace": workspace_id, "member": member_id}, OWNER_OPTIONS
    )
    page = balances.history(ctx.db(), kind, owner, limit=limit, before=before, actor=ctx.actor)
    return Output(page, _render_history)


def _render_history(console: Console, data: dict[str, Any]) -> None:
    table = Table("entry", "at", "kind", "bucket", "amount", "balance after", "job", "actor")
    for e in data["entries"]:
        table.add_row(
            str(e["entry_id"]),
            e["at"][:19],
            e["kind"],
            e["bucket"],
            f"{e['amount']:+d}",
            str(e["balance_after"]),
            e["job_id"] or "",
            e["actor"],
        )
    console.print(table)
    if data["next_before"]:
        console.print(f"more: --before {data['next_before']}")


@cli.command("quote")
@click.argument("action")
@click.option("--country", help="ISO code or common name of the recipient's country.")
@click.option("--denomination", help="Gift card value in whole US dollars.")
@command_options
def quote_cmd(ctx: Context, action: str, country: str | None, denomination: str | None) -> Output:
    """Price an action under the current catalog."""
    from shared.pricing import catalog_from_settings, quote

    catalog = catalog_from_settings(ctx.settings)
    result = quote(action, country=country, denomination=denomination, catalog=catalog)
    return Output(result.as_dict())


@cli.command("reconcile")
@command_options
def reconcile_cmd(ctx: Context) -> Output:
    """Check the ledger invariants; exits 1 when any drift is found."""
    from shared.services.reconcile import reconcile

    if not ctx.actor.is_support:
        raise PermissionDenied(f"{ctx.actor} may not reconcile: only support may")
    report = reconcile(ctx.db())
    if not report.ok:
        emit(ctx, Output(report.as_dict()))
        for problem in report.problems:
            click.echo(f"drift: {problem.message}", err=True)
        raise SystemExit(1)
    return Output(report.as_dict())


# The pipeline commands (send, job, dead-letters) live in their own module.
from shared import cli_send  # noqa: E402, F401

# ---------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    as_json = "--json" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="credits", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except CreditsError as exc:
        _error(exc.as_dict(), as_json)
        return exc.exit_code
    except OperationalError as exc:
        _error({"error": "DatabaseUnavailable", "message": f"database error: {exc.orig}"}, as_json)
        return 11
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _error(payload: dict[str, str], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(payload), err=True)
    else:
        click.echo(f"error: {payload['message']}", err=True)


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
