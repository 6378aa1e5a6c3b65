"""Recovery sweeps, run by celery beat: resolve in-doubt jobs, resume or expire parked ones,
re-send jobs whose message is gone, confirm outcome events, and reconcile.

Each sweep takes a bounded batch, claims its rows in the database (so two sweeps never
share a row), and talks to the vendor outside any transaction. Every action is one of the
pipeline's own idempotent steps, so a sweep that dies half-way is simply run again.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from shared.adapters import intake
from shared.errors import CreditsError, JobNotAuthentic, TransientVendorError
from shared.events import Event
from shared.services import jobs, recovery
from shared.services.reconcile import reconcile
from shared.signing import verify
from worker.faults import maybe_crash
from worker.fulfilment import VendorStatus
from worker.outcomes import notifier
from worker.resources import Resources

log = logging.getLogger("credits.sweeps")


@dataclass
class SweepReport:
    name: str
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def as_dict(self) -> dict[str, Any]:
        return {"sweep": self.name, **self.counts}


def resolve_in_doubt(res: Resources) -> SweepReport:
    """Settle submitted jobs that no worker will attempt again, through the vendor's
    status. Never guess: an unreachable vendor keeps the hold."""
    s, report = res.settings, SweepReport("resolve_in_doubt")
    claimed = recovery.claim_in_doubt(
        res.db,
        older_than_s=s.in_doubt_after_s,
        redelivery_s=s.redelivery_delay_s,
        lease_s=s.job_lock_timeout_s,
        limit=s.sweep_batch,
    )
    for job in claimed:
        try:
            report.add(_resolve_one(res, job))
        except CreditsError as exc:
            # One bad row must not stop the batch; it stays claimed until its lease ends.
            log.error("job %s: cannot resolve: %s", job.job_id, exc)
            report.add("error")
    return report


def _resolve_one(res: Resources, job: recovery.Claimed) -> str:
    s, voided = res.settings, False
    try:
        status = res.provider.status(job.vendor_key)
        if status == VendorStatus.UNKNOWN and job.republished < s.max_resends:
            # The vendor never got it, and no worker will try again: the member still
            # wants it sent, so send it again (the vendor key keeps it to one send).
            recovery.mark_republished(res.db, job.pk)  # gives up our lease first
            res.client.republish(job.payload)
            return "resent"
        if status == VendorStatus.UNKNOWN:
            # Fence the key first, so a late submit cannot send after we refund.
            status = res.provider.void(job.vendor_key)
            voided = status == VendorStatus.FAILED
    except TransientVendorError as exc:
        log.warning("job %s: vendor unreachable, hold kept: %s", job.job_id, exc)
        return "unreachable"
    if status == VendorStatus.PENDING:
        recovery.extend_hold(res.db, job, ttl_s=s.hold_ttl_s)
        return "pending"
    if status == VendorStatus.DELIVERED:
        maybe_crash(res, "before_capture")
        view = jobs.complete(res.db, job.pk, notify=notifier(res))
    else:
        reason = (
            f"no answer from the vendor within {s.in_doubt_after_s:g}s (re-sent "
            f"{job.republished} times); voided by the resolver"
            if voided
            else "the vendor reports it failed; refunded by the resolver"
        )
        view = jobs.refund(res.db, job.pk, reason=reason, notify=notifier(res))
    return view.status


def resume_awaiting(res: Resources, *, member_id: int | None = None) -> SweepReport:
    """Re-send parked jobs whose member can now pay; expire those past their wait."""
    s, report = res.settings, SweepReport("resume_awaiting")
    batch = recovery.sweep_awaiting(
        res.db, lease_s=s.resume_lease_s, limit=s.sweep_batch, member_id=member_id,
        notify=notifier(res),
    )  # fmt: skip
    report.add("expired", len(batch.expired))
    for job in batch.resume:
        res.client.republish(job.payload)
        report.add("resumed")
    return report


def republish_stale(res: Resources) -> SweepReport:
    """Re-send received or reserved jobs whose message was lost, with the same job_id."""
    s, report = res.settings, SweepReport("republish_stale")
    batch = recovery.claim_stale(
        res.db, older_than_s=s.stale_after_s, max_resends=s.max_resends, limit=s.sweep_batch,
        notify=notifier(res),
    )  # fmt: skip
    for job in batch.resend:
        res.client.republish(job.payload)
        report.add(f"republished_{job.status}")
    for view in batch.given_up:
        log.error("job %s: given up: %s", view.job_id, view.detail)
        report.add("given_up")
    return report


def recover_intake(res: Resources) -> SweepReport:
    """Re-send jobs whose message was lost before any task started (Redis broker only):
    intake entries older than ``CREDITS_INTAKE_AFTER_S`` whose job has no row (kombu#305)."""
    s, report = res.settings, SweepReport("recover_intake")
    if not s.intake_outbox:
        return report
    index = intake.index_key(s.key_prefix)
    entries = res.redis.zrangebyscore(
        index, "-inf", time.time() - s.intake_after, start=0, num=s.sweep_batch
    )
    messages = {raw: _decoded(raw) for raw in entries}
    ids = {raw: intake.ids_of(message) for raw, message in messages.items()}
    recorded = recovery.recorded_jobs(res.db, [i for i in ids.values() if i])
    done = []
    for raw, message in messages.items():
        if ids[raw] in recorded:
            done.append(raw)  # a worker recorded the job: it is PostgreSQL's now
            report.add("recorded")
        elif ids[raw] is not None and _resend_intake(res, message):
            res.redis.zadd(index, {raw: time.time()})  # again after another interval
            report.add("resent")
        else:
            log.warning("intake entry dropped: not a message any worker would accept")
            done.append(raw)
            report.add("refused")
    if done:
        res.redis.zrem(index, *done)
    return report


def _decoded(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None  # not JSON: ids_of() says it is no message, and it is dropped


def _resend_intake(res: Resources, message: dict[str, Any]) -> bool:
    """Publish an intake entry's message as its producer signed it; False if no worker
    would accept it (an entry anyone with Redis access could have written is never
    signed with this worker's key)."""
    try:
        verify(message["job"], message.get("auth"), res.verify_keys)
    except JobNotAuthentic:
        return False
    res.client.republish(message["job"], auth=message["auth"])
    log.info("job %s of member %s: re-sent from the intake outbox (no task had started)",
             message["job"]["job_id"], message["job"]["member_id"])  # fmt: skip
    return True


def notify_outcomes(res: Resources) -> SweepReport:
    """Make sure the flow engine heard every final outcome (an outbox over the jobs table)."""
    s, report = res.settings, SweepReport("notify_outcomes")
    views = recovery.unnotified_finals(
        res.db, older_than_s=s.job_lock_timeout_s, limit=s.sweep_batch
    )
    for view in views:
        report.add("sent" if res.events.publish(Event(**view.event_fields())) else "already_sent")
    recovery.mark_notified(res.db, [v.pk for v in views])
    return report


def reconcile_and_report(res: Resources) -> SweepReport:
    """Check the invariants; log each drift as an error naming the wallet."""
    result = reconcile(res.db)
    report = SweepReport("reconcile", {"drift": len(result.problems), **result.figures})
    prefix = res.settings.key_prefix
    res.redis.set(f"{prefix}reconcile:drift", len(result.problems))
    res.redis.hset(f"{prefix}reconcile:figures", mapping=result.figures)
    for problem in result.problems:
        log.error(
            "ledger drift: %s",
            problem.message,
            extra={"wallet_id": problem.wallet_id, "invariant": problem.invariant},
        )
    return report
