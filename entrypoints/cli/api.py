"""The HTTP API from the CLI: serve it, and make, list and revoke its tokens (support)."""

from __future__ import annotations

from typing import Any

import click

from entrypoints.cli import render
from entrypoints.cli.app import ID, Context, Output, cli, command_options
from entrypoints.cli.directory import _listing
from shared.services import tokens


@cli.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65_535), default=8000, show_default=True)
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Server processes (one per core is a good start).")  # fmt: skip
@click.pass_obj
def serve_cmd(ctx: Context, host: str, port: int, workers: int) -> None:
    """Serve the HTTP API (/v1, /openapi.json) and the Team page (/team).

    \b
    Needs CREDITS_JOB_SIGNING_KEY (the API signs the jobs it sends) and a migrated
    database. Examples:
      credits serve                       http://127.0.0.1:8000/team
      credits serve --host 0.0.0.0 --port 8080 --workers 2
    """
    from entrypoints.api.server import serve

    ctx.db().dispose()  # fail now, and plainly, if the schema is missing
    serve(ctx.settings, host, port, workers=workers)


@cli.group("tokens")
def tokens_group() -> None:
    """API tokens for the HTTP API and the Team page (support only)."""


@tokens_group.command("create")
@click.option("--member", "member_id", type=ID, help="The member the token acts as.")
@click.option("--support", is_flag=True, help="A support token, for ops tools.")
@click.option("--name", help="What the token is for, e.g. 'billing' or 'Ava laptop'.")
@command_options
def tokens_create(ctx: Context, member_id: int | None, support: bool, name: str | None) -> Output:
    """Make a token; its secret is printed this once and never stored.

    \b
    Examples:
      credits tokens create --member 3 --name "Ava's laptop"
      credits tokens create --support --name ops --json
    """
    if support == (member_id is not None):
        raise click.UsageError("give exactly one of --member ID or --support")
    if support and not name:
        raise click.UsageError("--support needs --name: say which tool will use the token")
    made = tokens.create_token(ctx.db(), member_id=member_id, name=name or "api",
                               actor=ctx.actor)  # fmt: skip
    return Output(made.as_dict(), _show_new)


def _show_new(out: Any, data: dict[str, Any]) -> None:
    owner = "support" if data["member_id"] is None else f"member {data['member_id']}"
    out.print(f"token {data['id']} ({render.safe(data['name'])}) for {owner}; it is shown "
              "only now, so store it:", markup=False)  # fmt: skip
    out.print(data["token"], markup=False, soft_wrap=True)


@tokens_group.command("list")
@click.option("--member", "member_id", type=ID, help="Only this member's tokens.")
@command_options
def tokens_list(ctx: Context, member_id: int | None) -> Output:
    """List tokens, newest first (never their secrets).

    \b
    Example: credits tokens list --member 3
    """
    found = tokens.list_tokens(ctx.db(), member_id=member_id, actor=ctx.actor)
    columns = ("id", "name", "member_id", "member", "role", "created_at", "last_used_at",
               "revoked_at")  # fmt: skip
    return _listing("tokens", found, columns)


@tokens_group.command("revoke")
@click.argument("token_id", type=ID)
@command_options
def tokens_revoke(ctx: Context, token_id: int) -> Output:
    """Revoke a token at once: the API and the Team page refuse it from now on.

    \b
    Example: credits tokens revoke 4
    """
    return Output(tokens.revoke(ctx.db(), token_id, actor=ctx.actor))
