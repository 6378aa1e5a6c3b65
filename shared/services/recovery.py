"""Recovery sweeps, domain side: claim batches of stuck jobs, expire parked ones.

Each claim is one short transaction that takes rows with ``FOR UPDATE SKIP LOCKED``
(:mod:`shared.services.row_locks`) and stamps them with a lease (``updated_at = now``),
so two sweeps -- or a sweep and a worker -- never take the same row, and the vendor is
asked outside any transaction. ``worker.recovery`` does the asking and publishing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shared.db import Database, UnitOfWork
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
from shared.services.holds import resolve_in
from shared.services.jobs import JobView, Notify, move_job, tell, view_of
from shared.services.row_locks import claim_batch


@dataclass(frozen=True)
class Claimed:
    pk: int
    job_id: str
    member_id: int
    status: str
    cost: int
    source: str
    payload: dict[str, Any]
    created_at: datetime
    republished: int
    key_id: str | None

    @classmethod
    def of(cls, job: Job) -> Claimed:
        return cls(job.id, job.job_id, job.member_id, job.status, job.cost, job.source,
                   job.payload, job.created_at, job.republished, job.key_id)  # fmt: skip

    @property
    def vendor_key(self) -> str:
        return vendor_key(self.member_id, self.job_id)


def vendor_key(member_id: int, job_id: str) -> str:
    """The idempotency key the vendor sees: a job is its member's, so the member is in it."""
    return f"m{member_id}:{job_id}"


def _lease(session: Session, rows: list[Job], now: datetime, **values: Any) -> list[Claimed]:
    if rows:
        session.execute(
            update(Job).where(Job.id.in_([r.id for r in rows])).values(updated_at=now, **values)
        )
    return [Claimed.of(r) for r in rows]


def claim_in_doubt(
    db: Database, *, older_than_s: float, redelivery_s: float, lease_s: float, limit: int
) -> list[Claimed]:
    """Submitted jobs that no worker will attempt again on its own.

    A job qualifies when it has been idle ``older_than_s`` (or its hold outlived its TTL),
    and its next attempt -- a retry due at ``next_attempt_at``, or the attempt that was
    running until then -- is more than ``redelivery_s`` in the past: the longest a broker
    takes to hand a lost worker's message to another worker. The claim takes the job's
    lease for ``lease_s``, so a late delivery waits while the resolver asks the vendor.
    """
    now = utcnow()
    expired_holds = select(Hold.job_id).where(
        Hold.state == HoldState.HELD.value, Hold.expires_at < now
    )
    nobody_coming = Job.next_attempt_at.is_(None) | (
        Job.next_attempt_at < now - timedelta(seconds=redelivery_s)
    )
    query = (
        select(Job)
        .where(Job.status == JobStatus.SUBMITTED.value, nobody_coming)
        .where(
            (Job.updated_at < now - timedelta(seconds=older_than_s)) | Job.job_id.in_(expired_holds)
        )
        .order_by(Job.updated_at)
        .limit(limit)
    )
    with db.unit_of_work() as session:
        lease = now + timedelta(seconds=lease_s)
        claimed = _lease(session, claim_batch(session, query), now, next_attempt_at=lease)
        session.commit()
        return claimed


def mark_republished(db: Database, pk: int) -> None:
    """A job re-sent by a sweep: count it, so a job that keeps coming back is given up, and
    give up the resolver's lease, so the re-sent message runs at once."""
    with db.unit_of_work() as session:
        session.execute(
            update(Job)
            .where(Job.id == pk)
            .values(republished=Job.republished + 1, next_attempt_at=None)
        )
        session.commit()


@dataclass(frozen=True)
class StaleBatch:
    resend: list[Claimed]
    given_up: list[JobView]


def claim_stale(
    db: Database, *, older_than_s: float, max_resends: int, limit: int, notify: Notify | None
) -> StaleBatch:
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
    )
    with db.unit_of_work() as session:
        rows = claim_batch(session, query)
        resend = [job for job in rows if job.republished < max_resends]
        given_up = [give_up(session, job, max_resends, notify) for job in rows
                    if job not in resend]  # fmt: skip
        claimed = _lease(session, resend, now, republished=Job.republished + 1)
        session.commit()
        return StaleBatch(claimed, given_up)


def give_up(session: UnitOfWork, job: Job, max_resends: int, notify: Notify | None) -> JobView:
    detail = f"gave up after {max_resends} re-sends: its message keeps failing"
    resolved = None
    if job.status == JobStatus.RESERVED and job.cost > 0:
        wallet_id = session.scalar(select(Member.wallet_id).where(Member.id == job.member_id))
        resolved = resolve_in(session, job.job_id, wallet_id, HoldState.RELEASED)
    to = JobStatus.REFUNDED if job.status == JobStatus.RESERVED else JobStatus.REJECTED
    row = move_job(session, job, to, (JobStatus(job.status),), detail=detail, last_error=detail)
    return tell(session, view_of(row or job, detail=detail, balances=resolved), notify)


def extend_hold(db: Database, claimed: Claimed, *, ttl_s: float) -> None:
    """The vendor says pending: keep the hold, and push its expiry out."""
    with db.unit_of_work() as session:
        wallet_id = select(Member.wallet_id).where(Member.id == claimed.member_id)
        session.execute(
            update(Hold)
            .where(Hold.job_id == claimed.job_id, Hold.wallet_id == wallet_id.scalar_subquery())
            .where(Hold.state == HoldState.HELD.value)
            .values(expires_at=utcnow() + timedelta(seconds=ttl_s))
        )
        session.commit()


@dataclass(frozen=True)
class ParkedBatch:
    resume: list[Claimed]
    expired: list[JobView]


def sweep_awaiting(
    db: Database,
    *,
    lease_s: float,
    limit: int,
    member_id: int | None = None,
    notify: Notify | None = None,
) -> ParkedBatch:
    """Expire parked jobs past their wait; pick those whose member can now afford them.

    Per member, oldest first, only as many jobs as the available balance covers, so a
    small top-up does not wake a thousand jobs to fail again. Picked jobs get a lease.
    With ``member_id``, only that member's jobs, and no lease wait: credits just arrived.
    """
    now = utcnow()
    with db.unit_of_work() as session:
        expired = _expire(session, now, limit, notify)
        query = (
            select(Job, Wallet.available)
            .join(Member, Member.id == Job.member_id)
            .join(Wallet, Wallet.id == Member.wallet_id)
            .where(Job.status == JobStatus.AWAITING_CREDITS.value)
            .order_by(Job.member_id, Job.created_at)
            .limit(limit)
            .with_for_update(of=Job, skip_locked=True)
        )
        if member_id is None:
            query = query.where(Job.updated_at < now - timedelta(seconds=lease_s))
        else:
            query = query.where(Job.member_id == member_id)
        budget: dict[int, int] = {}
        picked = []
        for job, available in session.execute(query).all():
            left = budget.setdefault(job.member_id, available)
            if job.cost <= left:
                budget[job.member_id] = left - job.cost
                picked.append(job)
        claimed = _lease(session, picked, now)
        session.commit()
        return ParkedBatch(claimed, expired)


def _expire(session: UnitOfWork, now: datetime, limit: int, notify: Notify | None) -> list[JobView]:
    query = (
        select(Job)
        .where(Job.status == JobStatus.AWAITING_CREDITS.value, Job.wait_expires_at < now)
        .order_by(Job.wait_expires_at)
        .limit(limit)
    )
    views = []
    detail = "waited too long for credits"
    for job in claim_batch(session, query):
        row = move_job(session, job, JobStatus.EXPIRED, (JobStatus.AWAITING_CREDITS,),
                       detail=detail, last_error=detail)  # fmt: skip
        if row is not None:
            views.append(tell(session, view_of(row, detail=detail), notify))
    return views


def members_with_parked_jobs(session: Session, wallet_ids: list[int]) -> list[int]:
    """Which of these wallets belong to members with parked jobs (credits just arrived)."""
    return list(
        session.scalars(
            select(Member.id)
            .where(Member.wallet_id.in_(wallet_ids))
            .where(
                select(Job.id)
                .where(Job.member_id == Member.id)
                .where(Job.status == JobStatus.AWAITING_CREDITS.value)
                .exists()
            )
        )
    )


def unnotified_finals(db: Database, *, older_than_s: float, limit: int) -> list[JobView]:
    """Final jobs whose outcome event is not yet confirmed, oldest first.

    A worker that died between its last commit and its event leaves one of these; so
    does a Redis that lost the stream. Re-publishing is safe: events go out once per
    (member, job_id, status).
    """
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    with db.unit_of_work() as session:
        rows = session.execute(
            select(Job, Wallet.available, Wallet.held)
            .join(Member, Member.id == Job.member_id)
            .join(Wallet, Wallet.id == Member.wallet_id)
            .where(Job.notified_at.is_(None), Job.updated_at < cutoff)
            .where(Job.status.in_([s.value for s in FINAL_JOB_STATUSES]))
            .order_by(Job.updated_at)
            .limit(limit)
        ).all()
        return [view_of(row.Job, changed=False, balances=row) for row in rows]


def mark_notified(db: Database, pks: list[int]) -> None:
    if not pks:
        return
    with db.unit_of_work() as session:
        session.execute(update(Job).where(Job.id.in_(pks)).values(notified_at=utcnow()))
        session.commit()


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
        "open_held_credits": int(credits),
        "oldest_open_hold_age_s": (now - oldest).total_seconds() if oldest else 0.0,
        "awaiting_credits": awaiting,
    }


def recorded_jobs(db: Database, keys: list[tuple[int, str]]) -> set[tuple[int, str]]:
    """Which of these (member_id, job_id) have a job row: one query for a batch."""
    if not keys:
        return set()
    with db.unit_of_work() as session:
        rows = session.execute(
            select(Job.member_id, Job.job_id).where(Job.job_id.in_({j for _, j in keys}))
        ).all()
    wanted = set(keys)
    return {(row.member_id, row.job_id) for row in rows} & wanted
