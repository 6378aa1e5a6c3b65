"""Recovery sweeps, run by celery beat: resolve in-doubt jobs, resume or expire parked ones,
re-send jobs whose message is gone, and reconcile.

Each sweep takes a bounded batch, claims its rows in the database (so two sweeps never
share a row), and talks to the vendor outside any transaction. Every action is one of the
pipeline's own idempotent steps, so a sweep that dies half-way is simply run again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shared.errors import CreditsError, TransientVendorError
from shared.events import Event
from shared.services import jobs, recovery
from shared.services.reconcile import reconcile
from worker.faults import maybe_crash
from worker.fulfilment import VendorStatus
from worker.pipeline import record_outcome
from worker.resources import Resources

log = logging.getLogger("credits.sweeps")

# Every sweep takes (resources, publish); publish(job payload, source) re-sends a job.
Publish = Callable[[dict[str, Any], str], None]


@dataclass
class SweepReport:
    name: str
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def as_dict(self) -> dict[str, Any]:
        return {"sweep": self.name, **self.counts}


def _emit(res: Resources, view: jobs.JobView) -> None:
    if view.changed:
        record_outcome(view)
    res.events.publish(Event(**view.event_fields()))


def resolve_in_doubt(res: Resources, publish: Publish | None = None) -> SweepReport:
    """Ask the vendor about submitted jobs nobody is working on. Never guess."""
    s, report = res.settings, SweepReport("resolve_in_doubt")
    claimed = recovery.claim_in_doubt(
        res.db, older_than_s=s.in_doubt_after_s, idle_s=s.job_lock_timeout_s, limit=s.sweep_batch
    )
    for job in claimed:
        with res.locks.job(job.job_id) as locked:
            if not locked:
                report.add("busy")  # a worker has it right now
                continue
            try:
                report.add(_resolve_one(res, job))
            except CreditsError as exc:
                # One bad row must not stop the batch; it stays claimed until its lease ends.
                log.error("job %s: cannot resolve: %s", job.job_id, exc)
                report.add("error")
    return report


def _resolve_one(res: Resources, job: recovery.Claimed) -> str:
    try:
        status = res.provider.status(job.job_id)
        if status == VendorStatus.UNKNOWN:
            # Never sent. Fence the key first, so a late submit cannot send after we refund.
            status = res.provider.void(job.job_id)
    except TransientVendorError as exc:
        log.warning("job %s: vendor unreachable, hold kept: %s", job.job_id, exc)
        return "unreachable"
    if status == VendorStatus.PENDING:
        recovery.extend_hold(res.db, job.job_id, ttl_s=res.settings.hold_ttl_s)
        return "pending"
    if status == VendorStatus.DELIVERED:
        maybe_crash(res, "before_capture")
        view = jobs.complete(res.db, job.job_id, vendor_ref=None)
    else:
        view = jobs.refund(res.db, job.job_id, reason=f"resolved: vendor reports {status}")
    _emit(res, view)
    return view.status


def resume_awaiting(res: Resources, publish: Publish) -> SweepReport:
    """Re-send parked jobs whose member can now pay; expire those past their wait."""
    s, report = res.settings, SweepReport("resume_awaiting")
    batch = recovery.sweep_awaiting(res.db, lease_s=s.resume_lease_s, limit=s.sweep_batch)
    for view in batch.expired:
        _emit(res, view)
        report.add("expired")
    for job in batch.resume:
        publish(job.payload, job.source)
        report.add("resumed")
    return report


def republish_stale(res: Resources, publish: Publish) -> SweepReport:
    """Re-send received or reserved jobs whose message was lost, with the same job_id."""
    s, report = res.settings, SweepReport("republish_stale")
    batch = recovery.claim_stale(
        res.db, older_than_s=s.stale_after_s, max_resends=s.max_resends, limit=s.sweep_batch
    )
    for job in batch.resend:
        publish(job.payload, job.source)
        report.add(f"republished_{job.status}")
    for view in batch.given_up:
        log.error("job %s: given up: %s", view.job_id, view.detail)
        _emit(res, view)
        report.add("given_up")
    return report


def notify_outcomes(res: Resources, publish: Publish | None = None) -> SweepReport:
    """Make sure the flow engine heard every final outcome (an outbox over the jobs table)."""
    s, report = res.settings, SweepReport("notify_outcomes")
    views = recovery.unnotified_finals(
        res.db, older_than_s=s.job_lock_timeout_s, limit=s.sweep_batch
    )
    for view in views:
        report.add("sent" if res.events.publish(Event(**view.event_fields())) else "already_sent")
    recovery.mark_notified(res.db, [v.job_id for v in views])
    return report


def reconcile_and_report(res: Resources, publish: Publish | None = None) -> SweepReport:
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
