"""Moving and reading credits: top-ups, allocations, balances, the tree, history, quotes,
and reconcile."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from entrypoints.cli import render
from entrypoints.cli.app import ID, MAX_ID, Context, Output, cli, command_options
from shared.client import request_resume
from shared.errors import InvalidRequest
from shared.services import balances, ledger

OWNER_OPTIONS = ("account", "workspace", "member")
KEY_HELP = "Idempotency key: a retry with the same key changes nothing."


def one_of(options: dict[str, int | None]) -> tuple[str, int]:
    given = [(kind, value) for kind, value in options.items() if value is not None]
    if len(given) != 1:
        raise click.UsageError(f"give exactly one of {' | '.join(f'--{k}' for k in options)}")
    return given[0]


def owner_options(fn: Callable) -> Callable:
    for kind in reversed(OWNER_OPTIONS):
        fn = click.option(f"--{kind}", f"{kind}_id", type=ID, help=f"A {kind} id.")(fn)
    return fn


@cli.command("topup", context_settings={"ignore_unknown_options": True})
@click.argument("account_id", type=ID)
@click.argument("n", type=click.IntRange(1, MAX_ID))
@click.option("--key", help=KEY_HELP)
@command_options
def topup_cmd(ctx: Context, account_id: int, n: int, key: str | None) -> Output:
    """Add N purchased credits to an account pool (support only).

    \b
    Example: credits topup 1 500 --key order-991
    """
    return Output(ledger.topup(ctx.db(), account_id, n, key=key, actor=ctx.actor).as_dict())


# `credits account topup` reads naturally too; both run the same command.
cli.commands["account"].add_command(topup_cmd, "topup")


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option("--workspace", "workspace_id", type=ID, help="Allocate from the account pool.")
@click.option("--member", "member_id", type=ID, help="Allocate from the workspace pool.")
@click.argument("n", required=False)
@click.option("--set", "set_to", type=click.IntRange(0, MAX_ID),
              help="Move whatever makes the balance N.")  # fmt: skip
@click.option("--key", help=KEY_HELP)
@command_options
def allocate(
    ctx: Context,
    workspace_id: int | None,
    member_id: int | None,
    n: str | None,
    set_to: int | None,
    key: str | None,
) -> Output:
    """Move N credits down from the parent pool; a negative N (or a lower --set) reclaims.

    \b
    Examples:
      credits allocate --workspace 1 100    account pool -> workspace
      credits allocate --member 3 20        workspace pool -> member
      credits allocate --member 3 -5        reclaim 5
      credits allocate --member 3 --set 10  make the balance 10
    """
    kind, target = one_of({"workspace": workspace_id, "member": member_id})
    if (n is None) == (set_to is None):
        raise click.UsageError("give exactly one of N or --set N")
    amount = None
    if n is not None:
        try:
            amount = int(n)
        except ValueError:
            raise click.BadParameter(f"{n!r} is not a whole number", param_hint="N") from None
        if amount == 0:
            raise click.BadParameter("0 moves nothing: give a non-zero N", param_hint="N")
    result = ledger.allocate(
        ctx.db(), kind, target, amount=amount, set_to=set_to, key=key, actor=ctx.actor,
        on_member_funded=lambda member: request_resume(ctx.settings, member),
    )  # fmt: skip
    return Output(result.as_dict())


@cli.command()
@owner_options
@command_options
def balance(ctx: Context, account_id: int | None, workspace_id: int | None, member_id: int | None):
    """Show one wallet: available, held and total.

    \b
    Example: credits balance --member 3
    """
    kind, owner = one_of({"account": account_id, "workspace": workspace_id, "member": member_id})
    return Output(balances.balance(ctx.db(), kind, owner, actor=ctx.actor).as_dict())


@cli.command("tree")
@click.argument("account_id", type=ID)
@command_options
def tree_cmd(ctx: Context, account_id: int) -> Output:
    """Show an account pool, its workspace pools, every member, and the totals.

    \b
    Example: credits tree 1
    """
    return Output(balances.tree(ctx.db(), account_id, actor=ctx.actor), render.tree)


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
    """Show a wallet's ledger entries, newest first, with who made each one.

    \b
    Example: credits history --member 3 --limit 50
    """
    kind, owner = one_of({"account": account_id, "workspace": workspace_id, "member": member_id})
    page = balances.history(ctx.db(), kind, owner, limit=limit, before=before, actor=ctx.actor)
    return Output(page, render.history)


@cli.command("quote")
@click.argument("action")
@click.option("--country", help="ISO code or common name of the recipient's country.")
@click.option("--denomination", help="Gift card value in whole US dollars.")
@command_options
def quote_cmd(ctx: Context, action: str, country: str | None, denomination: str | None) -> Output:
    """Price an action under the current catalog.

    \b
    Examples:
      credits quote postcard --country "United Kingdom"
      credits quote gift_card --denomination 25
    """
    from shared.pricing import catalog_from_settings, quote

    catalog = catalog_from_settings(ctx.settings)
    try:
        result = quote(action, country=country, denomination=denomination, catalog=catalog)
    except InvalidRequest as exc:
        # The CLI's option names in the message; the error keeps its type (UnknownCountry).
        exc.args = (_flags(str(exc)),)
        raise
    data = {k: v for k, v in result.as_dict().items() if v is not None}
    return Output(data)


def _flags(message: str) -> str:
    """Name the CLI's options in a pricing error instead of the job's field names."""
    return message.replace("country is", "--country is").replace(
        "denomination is", "--denomination is"
    )


@cli.command("reconcile")
@command_options
def reconcile_cmd(ctx: Context) -> Output | None:
    """Check the ledger invariants (support only); exits 1 when any drift is found.

    \b
    Example: credits reconcile
    """
    from shared.services.auth import require_support
    from shared.services.reconcile import reconcile

    db = ctx.db()
    with db.unit_of_work() as session:
        require_support(session, ctx.actor, "reconcile")
    report = reconcile(db)
    data: dict[str, Any] = report.as_dict()
    if report.ok:
        return Output(data, _render_reconcile)
    from entrypoints.cli.app import emit

    emit(ctx, Output(data, _render_reconcile))
    for problem in report.problems:
        click.echo(f"drift: {problem.message}", err=True)
    raise SystemExit(1)


def _render_reconcile(out: Any, data: dict[str, Any]) -> None:
    render.mapping(out, data["figures"])
    out.print(
        "reconcile OK" if data["ok"] else f"reconcile FAILED: {len(data['problems'])} problems"
    )
