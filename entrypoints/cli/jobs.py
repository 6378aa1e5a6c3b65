"""The pipeline from the CLI: send a job (and wait for it), look jobs up, list them,
cancel a parked one, and read dead letters."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import click
from redis.exceptions import RedisError

from entrypoints.cli import render
from entrypoints.cli.app import ID, Context, Output, cli, command_options
from shared.client import CreditsClient
from shared.config import mask_url
from shared.errors import (
    CreditsError,
    IdempotencyConflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
)
from shared.events import Event, typed
from shared.models import JobStatus
from shared.pricing import ACTIONS, catalog_from_settings, quote
from shared.schemas import parse_job, price_fields
from shared.services import job_reports, jobs
from shared.services.dead_letters import dead_letters
from shared.services.directory import get_member

ADDRESS_PARTS = ("name", "line1", "city", "region", "postal_code", "country")
# Job fields as the CLI's options name them, for error messages.
FLAGS = {"recipient": "--to", "return_address": "--from", "to": "--email",
         "message": "--message", "brand": "--brand", "denomination": "--denomination",
         "subject": "--subject", "body": "--body", "title": "--title", "notes": "--notes",
         "profile_url": "--profile-url", "lead_id": "--lead-id", "job_id": "--job-id",
         "member_id": "--member", "flow_id": "--flow-id", "step_id": "--step-id",
         "address_kind": "--address-kind"}  # fmt: skip
ACTION_FIELDS = """\b
What each action needs:
  handwritten_note  --message --to --from
  postcard          --message --to [--address-kind company|home]
  gift_card         --brand --denomination --to --from [--message]
  email             --email --subject --body
  task              --title [--notes]
  linkedin          --profile-url [--message]
  accept_lead       --lead-id
An address is 'name; line1; city; region; postal code; country' (empty parts allowed)."""


class WaitTimedOut(CreditsError):
    exit_code = 12


class JobParked(CreditsError):
    """``send --wait``: the job waits for credits; it resumes when the member gets some."""

    exit_code = 14


class JobNotSent(CreditsError):
    """``send --wait``: the job ended without being sent (refunded, rejected, expired...)."""

    exit_code = 15


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
        "flow_id": opts["flow_id"], "step_id": opts["step_id"], "message": opts["message"],
        "recipient": parse_address(opts["to"], "--to", opts["company"]),
        "return_address": parse_address(opts["from_"], "--from"),
        "brand": opts["brand"], "denomination": opts["denomination"], "to": opts["email"],
        "subject": opts["subject"], "body": opts["body"], "title": opts["title"],
        "notes": opts["notes"], "profile_url": opts["profile_url"], "lead_id": opts["lead_id"],
        "address_kind": opts["address_kind"],
    }  # fmt: skip
    job.update({k: v for k, v in fields.items() if v is not None})
    return job


def in_flags(message: str) -> str:
    """``return_address: Field required`` -> ``--from: Field required``."""
    return re.sub(
        r"(?<![\w-])(" + "|".join(FLAGS) + r")(?=[.:])",
        lambda m: FLAGS[m.group(1)],
        message.removeprefix("invalid job: "),
    )


@contextmanager
def client_for(ctx: Context) -> Iterator[CreditsClient]:
    client = CreditsClient(settings=ctx.settings)
    try:
        yield client
    except RedisError as exc:
        raise ServiceUnavailable(
            f"Redis at {mask_url(ctx.settings.redis_url)} is not answering "
            f"({type(exc).__name__}): outcomes cannot be read"
        ) from None
    finally:
        client.close()


@contextmanager
def notify_outcomes(ctx: Context) -> Iterator[Any]:
    """A ``notify`` for services run from the CLI: outcomes go on the event stream."""
    from shared.adapters.events import EventStream
    from shared.adapters.redis_client import make_redis

    settings = ctx.settings
    stream = EventStream(make_redis(settings.redis_url), settings.stream,
                         maxlen=settings.events_stream_maxlen)  # fmt: skip
    yield lambda view: stream.publish(Event(**view.event_fields()))


@cli.command("send", epilog=ACTION_FIELDS)
@click.option("--member", "member_id", type=ID, required=True, help="The member who pays.")
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
@click.option("--notes", help="Task notes.")
@click.option("--profile-url", help="LinkedIn profile URL.")
@click.option("--lead-id")
@command_options
def send_cmd(ctx: Context, member_id: int, action: str, wait_s: float | None, **opts) -> Output:
    """Validate a send-action job, sign it and publish it to the workers.

    \b
    Example:
      credits send --member 3 postcard --message Hi \\
          --to "Jane Roe; 1 Main St; Springfield; IL; 62701; US" --wait 30
    """
    if not ctx.actor.is_support and ctx.actor.member_id != member_id:
        raise PermissionDenied(f"{ctx.actor} may not send on behalf of member {member_id}")
    try:
        spec = parse_job(build_job(member_id, action, opts))
        # Price it here too, so a denomination the catalog does not offer fails now.
        quote(action, catalog=catalog_from_settings(ctx.settings), **price_fields(spec))
    except InvalidRequest as exc:
        raise InvalidRequest(in_flags(str(exc))) from None
    db = ctx.db()
    with db.unit_of_work() as session:  # an unknown member is NotFound now, not a dead letter
        member = get_member(session, member_id, actor=ctx.actor)
        if not member.active:
            raise NotFound("member", member_id)
    existing = _existing(ctx, spec)
    if existing is not None and existing.final:
        return _outcome(existing.event_fields() | {"replayed": True}, wait_s)
    with client_for(ctx) as client:
        after = client.events.last_id() if wait_s is not None else None
        job_id = client.send_action(spec)
        if wait_s is None:
            return Output({"job_id": job_id, "member_id": member_id, "queued": True})
        outcome = client.events.wait_for(member_id, job_id, after, wait_s)
    if outcome is None:
        try:
            jobs.exists(db, member_id, job_id)
            state = "it is recorded but not final yet: see `credits job`"
        except NotFound:
            state = "no worker has taken it yet (is a worker running?)"
        raise WaitTimedOut(f"no outcome for job {job_id!r} within {wait_s:g}s; {state}")
    return _outcome(typed(outcome), wait_s)


def _existing(ctx: Context, spec) -> jobs.JobView | None:
    """The member's job with this job_id, if any; other content is a conflict, now."""
    try:
        return job_reports.resend_of(ctx.db(), spec, actor=ctx.actor)
    except IdempotencyConflict as exc:
        raise IdempotencyConflict(f"{exc}: choose another --job-id") from None


def _outcome(event: dict[str, Any], wait_s: float | None) -> Output:
    """The outcome as output; with ``--wait``, anything but completed is its own exit."""
    status, reason = event["status"], event.get("reason") or ""
    if wait_s is not None and status == JobStatus.AWAITING_CREDITS:
        raise JobParked(
            f"job {event['job_id']!r} is parked awaiting credits ({reason}); it resumes "
            "when the member is given credits"
        )
    if wait_s is not None and status != JobStatus.COMPLETED:
        raise JobNotSent(f"job {event['job_id']!r} ended {status}: {reason}")
    if isinstance(event.get("at"), float):  # the stream keeps epoch seconds; we print ISO
        event = event | {"at": datetime.fromtimestamp(event["at"], UTC).isoformat()}
    return Output({"queued": True} | event)


@cli.command("job")
@click.argument("job_id")
@click.option("--member", "member_id", type=ID, help="Whose job (job ids are per member).")
@command_options
def job_cmd(ctx: Context, job_id: str, member_id: int | None) -> Output:
    """Show a job: state, cost, hold, and its history of state changes.

    \b
    Example: credits job flow-7:step-3:lead-42 --member 3
    """
    report = job_reports.job_report(ctx.db(), job_id, member_id=member_id, actor=ctx.actor)
    return Output(report.as_dict(), render.job)


@cli.command("jobs")
@click.option("--member", "member_id", type=ID, help="Only this member's jobs.")
@click.option("--account", "account_id", type=ID, help="Only this account's jobs.")
@click.option("--status", type=click.Choice([s.value for s in JobStatus]))
@click.option("--parked", is_flag=True, help="Only jobs awaiting credits.")
@click.option("--flow", "flow_id", help="Only jobs of this flow.")
@click.option("--since", type=click.DateTime(), help="Only jobs created at or after (UTC).")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option("--before", type=ID, help="Page cursor: jobs older than this cursor.")
@command_options
def jobs_cmd(ctx: Context, parked: bool, since: datetime | None, **filters: Any) -> Output:
    """List jobs, newest first, with filters.

    \b
    Examples:
      credits jobs --member 3 --status completed
      credits jobs --parked
      credits jobs --flow flow-7 --since 2026-11-01
    """
    if parked:
        if filters["status"] not in (None, JobStatus.AWAITING_CREDITS.value):
            raise click.UsageError("--parked and --status name different statuses")
        filters["status"] = JobStatus.AWAITING_CREDITS.value
    since = since.replace(tzinfo=UTC) if since else None
    page = job_reports.list_jobs(
        ctx.db(), job_reports.JobFilter(since=since, **filters), actor=ctx.actor
    )
    columns = ("cursor", "created_at", "job_id", "member_id", "action", "status", "cost")

    def show(out: Any, data: dict[str, Any]) -> None:
        render.rows(out, columns, ([j[c] for c in columns] for j in data["jobs"]))
        if data["next_before"]:
            out.print(f"more: --before {data['next_before']}")

    return Output(page, show)


@cli.command("cancel")
@click.argument("job_id")
@click.option("--member", "member_id", type=ID, help="Whose job (job ids are per member).")
@command_options
def cancel_cmd(ctx: Context, job_id: str, member_id: int | None) -> Output:
    """Cancel a job parked awaiting credits; it holds nothing, so nothing is released.

    \b
    Example: credits cancel flow-7:step-3:lead-42 --member 3
    """
    with notify_outcomes(ctx) as notify:
        view = jobs.cancel(ctx.db(), member_id, job_id, actor=ctx.actor, notify=notify)
    return Output(view.event_fields() | {"replayed": not view.changed})


@cli.command("dead-letters")
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@command_options
def dead_letters_cmd(ctx: Context, limit: int) -> Output:
    """Messages the workers could not act on, newest first, with their reasons (support).

    \b
    Example: credits dead-letters --limit 50
    """
    letters = dead_letters(ctx.db(), limit=limit, actor=ctx.actor)
    columns = ("id", "received_at", "queue", "member_id", "job_id", "reason")

    def show(out: Any, data: dict[str, Any]) -> None:
        render.rows(out, columns, ([r[c] for c in columns] for r in data["dead_letters"]))

    return Output({"dead_letters": letters}, show)
