"""Operations: schema migrations and the embedded demo."""

from __future__ import annotations

import click

from entrypoints.cli.app import Context, Output, cli, command_options
from shared.errors import InvalidRequest, PermissionDenied


@cli.group()
def db() -> None:
    """Schema migrations (support only)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@command_options
def db_upgrade(ctx: Context, revision: str) -> Output:
    """Create or migrate the schema (Alembic), as the database's owner role.

    \b
    Example: credits db upgrade
    """
    from alembic.util import CommandError

    from shared.migrations import current, upgrade

    ctx.db(require_schema=False)
    if not ctx.actor.is_support:
        raise PermissionDenied(f"{ctx.actor} may not migrate the schema: only support may")
    url = ctx.settings.database_url
    try:
        upgrade(url, revision)
    except CommandError as exc:
        raise InvalidRequest(f"cannot upgrade to revision {revision!r}: {exc}") from None
    return Output({"ok": True, "revision": current(url)})


@db.command("grant")
@click.option("--app-role", required=True, help="The app's least-privilege PostgreSQL role.")
@command_options
def db_grant(ctx: Context, app_role: str) -> Output:
    """Give the app's role rows only, as the owner (support only): it may read and write
    rows, only add to the append-only ledger, and never change the schema.

    \b
    Example: credits db upgrade && credits db grant --app-role credits_app
    """
    from shared.migrations import grant_app_role

    ctx.db(require_schema=False)
    if not ctx.actor.is_support:
        raise PermissionDenied(f"{ctx.actor} may not grant privileges: only support may")
    grant_app_role(ctx.settings.database_url, app_role)
    return Output({"ok": True, "app_role": app_role})


@cli.command("demo")
@click.option("--jobs", type=click.IntRange(1, 100_000), default=500, show_default=True)
@click.option("--database-url", "demo_db", help="Run against this database, not a temp SQLite.")
@click.option("--redis-url", "demo_redis", help="Use this Redis as broker, locks and events.")
@click.option("--serve", is_flag=True, help="Then serve the Team page on 127.0.0.1 (Ctrl-C stops).")
@click.option("--port", type=click.IntRange(1, 65_535), default=8000, show_default=True,
              help="The Team page's port, with --serve.")  # fmt: skip
def demo_cmd(
    jobs: int, demo_db: str | None, demo_redis: str | None, serve: bool, port: int
) -> None:
    """Run the whole system on ~500 realistic sends. No servers needed.

    \b
    Examples:
      credits demo
      credits demo --serve              then the Team page, with login links
      credits demo --database-url postgresql://postgres@127.0.0.1/credits \\
                   --redis-url redis://127.0.0.1:6379/5
    """
    from entrypoints.demo import run_demo

    if (demo_db is None) != (demo_redis is None):
        raise click.UsageError("give both --database-url and --redis-url, or neither")
    ok = run_demo(jobs=jobs, database_url=demo_db, redis_url=demo_redis,
                  serve_port=port if serve else None)  # fmt: skip
    if not ok:
        raise SystemExit(1)
