"""Recovery sweeps, domain side: claim batches of stuck jobs, expire parked ones.

Each claim is one short transaction that takes rows with ``FOR UPDATE SKIP LOCKED`` and
stamps them with a lease (``updated_at = now``), so two sweeps -- or a sweep and a worker
-- never take the same row, and the vendor is asked outside any transaction. The worker's
``worker.sweeps`` module does the asking and publishing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shared.db import Database
from shared.models import (
    FINAL_JOB_STATUSES,
    Hold,
    HoldState,
    Job,
    JobStatus,
    Member,
    Wallet,
    utcnow,
)
from shared.services.jobs import JobView, move_job, view_of
from shared.services.ledger import resolve_in


@dataclass(frozen=True)
class Claimed:
    job_id: str
    member_id: int
    status: str
    cost: int
    source: str
    payload: dict[str, Any]
    created_at: datetime

    @classmethod
    def of(cls, job: Job) -> Claimed:
        return cls(job.job_id, job.member_id, job.status, job.cost, job.source, job.payload,
                   job.created_at)  # fmt: skip


def _claim(session: Session, query, now: datetime) -> list[Claimed]:
    rows = list(session.scalars(query.with_for_update(skip_locked=True)))
    if rows:
        session.execute(update(Job).where(Job.id.in_([r.id for r in rows])).values(updated_at=now))
    return [Claimed.of(r) for r in rows]


def claim_in_doubt(
    db: Database, *, older_than_s: float, idle_s: float, limit: int
) -> list[Claimed]:
    """Submitted jobs nobody has touched for ``older_than_s``, or whose hold outlived its
    TTL and that have been idle for ``idle_s`` (longer than any job lock lasts)."""
    now = utcnow()
    cutoff = now - timedelta(seconds=older_than_s)
    expired_holds = select(Hold.job_id).where(
        Hold.state == HoldState.HELD.value, Hold.expires_at < now
    )
    query = (
        select(Job)
        .where(Job.status == JobStatus.SUBMITTED.value)
        .where(
            (Job.updated_at < cutoff)
            | (Job.job_id.in_(expired_holds) & (Job.updated_at < now - timedelta(seconds=idle_s)))
        )
        .order_by(Job.updated_at)
        .limit(limit)
    )
    with db.unit_of_work() as session:
        return _claim(session, query, now)


@dataclass(frozen=True)
class StaleBatch:
    resend: list[Claimed]
    given_up: list[JobView]


def claim_stale(db: Database, *, older_than_s: float, max_resends: int, limit: int) -> StaleBatch:
    """Received or reserved jobs whose message seems gone: re-send them with the same job_id.

    A job re-sent ``max_resends`` times without moving on is a poison job (its message
    keeps failing): it is given up instead, its hold released, so it ends in a final state
    the flow engine hears about rather than looping for ever.
    """
    now = utcnow()
    query = (
        select(Job)
        .where(Job.status.in_([JobStatus.RECEIVED.value, JobStatus.RESERVED.value]))
        .where(Job.updated_at < now - timedelta(seconds=older_than_s))
        .order_by(Job.updated_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    with db.unit_of_work() as session:
        rows = list(session.scalars(query))
        resend = [job for job in rows if job.republished < max_resends]
        if resend:
            session.execute(
                update(Job)
                .where(Job.id.in_([j.id for j in resend]))
                .values(updated_at=now, republished=Job.republished + 1)
            )
        given_up = [_give_up(session, job, max_resends) for job in rows if job not in resend]
        return StaleBatch([Claimed.of(j) for j in resend], given_up)


def _give_up(session: Session, job: Job, max_resends: int) -> JobView:
    detail = f"gave up after {max_resends} re-sends: its message keeps failing"
    resolved = None
    if job.status == JobStatus.RESERVED and job.cost > 0:
        resolved = resolve_in(session, job.job_id, HoldState.RELEASED)
    to = JobStatus.REFUNDED if job.status == JobStatus.RESERVED else JobStatus.REJECTED
    move_job(session, job, to, (JobStatus(job.status),), detail=detail, last_error=detail)
    return view_of(session, job, detail=detail, balances=resolved)


def extend_hold(db: Database, job_id: str, *, ttl_s: float) -> None:
    """The vendor says pending: keep the hold, and push its expiry out."""
    with db.unit_of_work() as session:
        session.execute(
            update(Hold)
            .where(Hold.job_id == job_id, Hold.state == HoldState.HELD.value)
            .values(expires_at=utcnow() + timedelta(seconds=ttl_s))
        )


@dataclass(frozen=True)
class ParkedBatch:
    resume: list[Claimed]
    expired: list[JobView]


def sweep_awaiting(db: Database, *, lease_s: float, limit: int) -> ParkedBatch:
    """Expire parked jobs past their wait; pick those whose member can now afford them.

    Per member, oldest first, only as many jobs as the available balance covers, so a
    small top-up does not wake a thousand jobs to fail again. Picked jobs get a lease.
    """
    now = utcnow()
    with db.unit_of_work() as session:
        expired = _expire(session, now, limit)
        rows = session.execute(
            select(Job, Wallet.available)
            .join(Member, Member.id == Job.member_id)
            .join(Wallet, Wallet.id == Member.wallet_id)
            .where(Job.status == JobStatus.AWAITING_CREDITS.value)
            .where(Job.updated_at < now - timedelta(seconds=lease_s))
            .order_by(Job.member_id, Job.created_at)
            .limit(limit)
            .with_for_update(of=Job, skip_locked=True)
        ).all()
        budget: dict[int, int] = {}
        picked = []
        for job, available in rows:
            left = budget.setdefault(job.member_id, available)
            if job.cost <= left:
                budget[job.member_id] = left - job.cost
                picked.append(job)
        if picked:
            session.execute(
                update(Job).where(Job.id.in_([j.id for j in picked])).values(updated_at=now)
            )
        return ParkedBatch([Claimed.of(j) for j in picked], expired)


def _expire(session: Session, now: datetime, limit: int) -> list[JobView]:
    rows = list(
        session.scalars(
            select(Job)
            .where(Job.status == JobStatus.AWAITING_CREDITS.value, Job.wait_expires_at < now)
            .order_by(Job.wait_expires_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    views = []
    for job in rows:
        if move_job(
            session,
            job,
            JobStatus.EXPIRED,
            (JobStatus.AWAITING_CREDITS,),
            detail="waited too long for credits",
        ):
            views.append(view_of(session, job, detail="waited too long for credits"))
    return views


def unnotified_finals(db: Database, *, older_than_s: float, limit: int) -> list[JobView]:
    """Final jobs whose outcome event is not yet confirmed, oldest first.

    A worker that died between its last commit and its event leaves one of these; so
    does a Redis that lost the stream. Re-publishing is safe: events go out once per
    (job_id, status).
    """
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    with db.unit_of_work() as session:
        rows = session.scalars(
            select(Job)
            .where(Job.notified_at.is_(None), Job.updated_at < cutoff)
            .where(Job.status.in_([s.value for s in FINAL_JOB_STATUSES]))
            .order_by(Job.updated_at)
            .limit(limit)
        )
        return [view_of(session, job, changed=False) for job in rows]


def mark_notified(db: Database, job_ids: list[str]) -> None:
    if not job_ids:
        return
    with db.unit_of_work() as session:
        session.execute(update(Job).where(Job.job_id.in_(job_ids)).values(notified_at=utcnow()))


def ledger_gauges(db: Database) -> dict[str, float]:
    """Open holds, their credits, the oldest one's age, and parked jobs: for metrics."""
    now = utcnow()
    with db.unit_of_work() as session:
        count, credits, oldest = session.execute(
            select(func.count(Hold.id), func.coalesce(func.sum(Hold.amount), 0),
                   func.min(Hold.created_at)).where(Hold.state == HoldState.HELD.value)
        ).one()  # fmt: skip
        awaiting = session.scalar(
            select(func.count(Job.id)).where(Job.status == JobStatus.AWAITING_CREDITS.value)
        )
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=now.tzinfo)
    return {
        "open_holds": count,
        "open_held_credits": credits,
        "oldest_open_hold_age_s": (now - oldest).total_seconds() if oldest else 0.0,
        "awaiting_credits": awaiting,
    }
