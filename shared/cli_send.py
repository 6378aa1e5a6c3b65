"""``credits send``, ``credits job`` and ``credits dead-letters``: the pipeline from the CLI."""

from __future__ import annotations

import uuid
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from shared.cli import Context, Output, cli, command_options
from shared.errors import CreditsError, InvalidRequest, PermissionDenied
from shared.events import typed
from shared.pricing import ACTIONS, catalog_from_settings, quote
from shared.schemas import parse_job, price_fields

ADDRESS_PARTS = ("name", "line1", "city", "region", "postal_code", "country")


class WaitTimedOut(CreditsError):
    exit_code = 12


def parse_address(text: str | None, option: str, company: str | None = None) -> dict | None:
    """``"Jane Doe; 1 Main St; Springfield; IL; 62701; US"`` -> an address dict."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(";")]
    if len(parts) != len(ADDRESS_PARTS):
        raise InvalidRequest(
            f"{option} takes {len(ADDRESS_PARTS)} parts separated by ';': "
            f"{'; '.join(ADDRESS_PARTS)} (got {len(parts)})"
        )
    address = {k: v for k, v in zip(ADDRESS_PARTS, parts, strict=True) if v}
    if company:
        address["company"] = company
    return address


def build_job(member_id: int, action: str, opts: dict[str, Any]) -> dict[str, Any]:
    job: dict[str, Any] = {
        "job_id": opts["job_id"] or f"cli-{uuid.uuid4().hex}",
        "member_id": member_id,
        "action": action,
        "source": "instant" if opts["instant"] else "flow",
    }
    fields = {
        "flow_id": opts["flow_id"],
        "step_id": opts["step_id"],
        "message": opts["message"],
        "recipient": parse_address(opts["to"], "--to", opts["company"]),
        "return_address": parse_address(opts["from_"], "--from"),
        "brand": opts["brand"],
        "denomination": opts["denomination"],
        "to": opts["email"],
        "subject": opts["subject"],
        "body": opts["body"],
        "title": opts["title"],
        "profile_url": opts["profile_url"],
        "lead_id": opts["lead_id"],
        "address_kind": opts["address_kind"],
    }
    job.update({k: v for k, v in fields.items() if v is not None})
    return job


@cli.command("send")
@click.option("--member", "member_id", type=int, required=True, help="The member who pays.")
@click.argument("action", type=click.Choice(ACTIONS))
@click.option("--job-id", help="Idempotency key; a new one is made when omitted.")
@click.option("--wait", "wait_s", type=click.FloatRange(0, 3600), help="Wait for the outcome.")
@click.option("--instant", is_flag=True, help="An instant action: the high-priority queue.")
@click.option("--flow-id")
@click.option("--step-id")
@click.option("--message")
@click.option("--to", help="Recipient: 'name; line1; city; region; postal code; country'.")
@click.option("--from", "from_", help="Return address, in the same form as --to.")
@click.option("--company", help="Recipient company.")
@click.option("--address-kind", type=click.Choice(["company", "home"]))
@click.option("--brand", help="Gift card brand.")
@click.option("--denomination", type=int, help="Gift card value in whole US dollars.")
@click.option("--email", help="Email recipient address.")
@click.option("--subject")
@click.option("--body")
@click.option("--title", help="Task title.")
@click.option("--profile-url", help="LinkedIn profile URL.")
@click.option("--lead-id")
@command_options
def send_cmd(ctx: Context, member_id: int, action: str, wait_s: float | None, **opts) -> Output:
    """Validate a send-action job and publish it to the workers."""
    from shared.client import CreditsClient

    job = build_job(member_id, action, opts)
    if not ctx.actor.is_support and ctx.actor.member_id != member_id:
        raise PermissionDenied(f"{ctx.actor} may not send on behalf of member {member_id}")
    # Price it here too, so a denomination the catalog does not offer fails now, not later.
    quote(action, catalog=catalog_from_settings(ctx.settings), **price_fields(parse_job(job)))
    client = CreditsClient(settings=ctx.settings)
    try:
        after = client.events.last_id() if wait_s is not None else None
        job_id = client.send_action(job)
        if wait_s is None:
            return Output({"job_id": job_id, "queued": True})
        outcome = client.events.wait_for(job_id, after, wait_s)
    finally:
        client.close()
    if outcome is None:
        raise WaitTimedOut(f"no outcome for job {job_id!r} within {wait_s:g}s; see credits job")
    return Output({"job_id": job_id, "queued": True} | typed(outcome))


@cli.command("job")
@click.argument("job_id")
@command_options
def job_cmd(ctx: Context, job_id: str) -> Output:
    """Show a job: state, cost, hold, and its history of state changes."""
    from shared.services import jobs

    return Output(jobs.job_report(ctx.db(), job_id, actor=ctx.actor).as_dict(), _render_job)


def _render_job(console: Console, data: dict[str, Any]) -> None:
    summary = Table(show_header=False, box=None)
    for key in (
        "job_id",
        "member_id",
        "action",
        "status",
        "cost",
        "catalog_version",
        "attempts",
        "flow_id",
        "step_id",
        "vendor_ref",
        "last_error",
    ):
        summary.add_row(f"[bold]{key}[/bold]", "" if data[key] is None else str(data[key]))
    hold = data["hold"]
    summary.add_row("[bold]hold[/bold]", f"{hold['amount']} {hold['state']}" if hold else "none")
    console.print(summary)
    history = Table("at", "from", "to", "detail")
    for h in data["history"]:
        history.add_row(h["at"][:23], h["from"] or "", h["to"], h["detail"] or "")
    console.print(history)


@cli.command("dead-letters")
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@command_options
def dead_letters_cmd(ctx: Context, limit: int) -> Output:
    """Messages the workers could not act on, newest first, with their reasons."""
    from shared.services import jobs

    if not ctx.actor.is_support:
        raise PermissionDenied(f"{ctx.actor} may not read dead letters: only support may")
    letters = jobs.dead_letters(ctx.db(), limit=limit)

    def render(console: Console, data: dict[str, Any]) -> None:
        table = Table("id", "received", "job_id", "reason")
        for row in data["dead_letters"]:
            table.add_row(
                str(row["id"]), row["received_at"][:19], row["job_id"] or "", row["reason"]
            )
        console.print(table)

    return Output({"dead_letters": letters}, render)


@cli.command("demo")
@click.option("--jobs", type=click.IntRange(1, 100_000), default=500, show_default=True)
@click.option("--database-url", "demo_db", help="Run against this database, not a temp SQLite.")
@click.option("--redis-url", "demo_redis", help="Use this Redis as broker, locks and events.")
def demo_cmd(jobs: int, demo_db: str | None, demo_redis: str | None) -> None:
    """Run the whole system on ~500 realistic sends. No servers needed."""
    from worker.demo import run_demo

    if (demo_db is None) != (demo_redis is None):
        raise click.UsageError("give both --database-url and --redis-url, or neither")
    if not run_demo(jobs=jobs, database_url=demo_db, redis_url=demo_redis):
        raise SystemExit(1)
