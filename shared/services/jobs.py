"""Send-action jobs: record, reserve, submit, and resolve them, one unit of work per step.

The worker calls these in order; each step is a conditional state change, so a
redelivered message, a retry or a second worker replays what is done and moves on:

    received ──> reserved ──> submitted ──> completed   (hold captured)
        │            ^             └──────> refunded    (hold released)
        │            │
        ├──> awaiting_credits ──> expired                 (no hold was taken)
        └──> rejected                                     (never priced: nothing charged)

The vendor is never called from here: the worker calls it between two of these steps,
outside any transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from shared.db import Database
from shared.errors import (
    IdempotencyConflict,
    InsufficientCredits,
    InvalidRequest,
    InvariantViolation,
    NotFound,
)
from shared.models import (
    FINAL_JOB_STATUSES,
    DeadLetter,
    Hold,
    HoldState,
    Job,
    JobStatus,
    JobTransition,
    Member,
    Wallet,
    utcnow,
)
from shared.pricing import Catalog, quote
from shared.schemas import Job as JobSpec
from shared.schemas import content_hash, job_dict, price_fields
from shared.services.auth import SUPPORT, Actor, require_member_reader
from shared.services.directory import get_workspace
from shared.services.ledger import HoldResult, hold_in, resolve_in, run_idempotent

MAX_ERROR_LEN = 1000
MAX_DEAD_LETTER_BODY = 64 * 1024


@dataclass(frozen=True)
class JobView:
    """A job as the pipeline and the flow engine see it, with the member's balance."""

    job_id: str
    member_id: int
    action: str
    status: str
    cost: int
    catalog_version: str
    attempts: int
    flow_id: str | None
    step_id: str | None
    source: str
    payload: dict[str, Any]
    available: int | None = None
    held: int | None = None
    changed: bool = True  # False when this call found the step already done
    detail: str | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL_JOB_STATUSES

    def event_fields(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "status": self.status,
            "member_id": self.member_id,
            "cost": self.cost,
            "available": self.available,
            "held": self.held,
            "flow_id": self.flow_id,
            "step_id": self.step_id,
            "reason": self.detail,
        }


def view_of(
    session: Session,
    job: Job,
    *,
    changed: bool = True,
    detail: str | None = None,
    balances: HoldResult | None = None,
    read_balances: bool = True,
) -> JobView:
    """The job with its member's balance: from ``balances`` when a ledger step just
    returned them, else read (one query); not at all for a step no event reports."""
    wallet = balances
    if wallet is None and read_balances:
        wallet = session.execute(
            select(Wallet.available, Wallet.held)
            .join(Member, Member.wallet_id == Wallet.id)
            .where(Member.id == job.member_id)
        ).one()
    return JobView(
        job.job_id,
        job.member_id,
        job.action,
        job.status,
        job.cost,
        job.catalog_version,
        job.attempts,
        job.flow_id,
        job.step_id,
        job.source,
        job.payload,
        wallet.available if wallet else None,
        wallet.held if wallet else None,
        changed,
        detail or job.last_error,
    )


def get_job(session: Session, job_id: str, *, lock: bool = False) -> Job:
    """The job row; with ``lock``, held FOR UPDATE until commit, so a sweep (which claims
    with SKIP LOCKED) or a second delivery cannot change it between our read and write."""
    query = select(Job).where(Job.job_id == job_id).execution_options(populate_existing=True)
    job = session.scalar(query.with_for_update() if lock else query)
    if job is None:
        raise NotFound("job", job_id)
    return job


def move_job(
    session: Session,
    job: Job,
    to: JobStatus,
    allowed_from: tuple[JobStatus, ...],
    *,
    detail: str | None = None,
    **values: Any,
) -> bool:
    """Change a job's status only if it is still in ``allowed_from``; record the transition.

    The in-session ``job`` is updated only when the row really changed: the ORM's own
    synchronisation would set it even when the WHERE matched nothing.
    """
    now, before = utcnow(), job.status
    new_values = {"status": to.value, "updated_at": now, **values}
    changed = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status.in_([s.value for s in allowed_from]))
        .values(**new_values)
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if changed is None:
        return False
    for key, value in new_values.items():
        set_committed_value(job, key, value)
    session.add(
        JobTransition(job_pk=job.id, from_status=before, to_status=to.value, detail=detail, at=now)
    )
    return True


def _must_move(session: Session, job: Job, to: JobStatus, allowed: tuple, **kwargs: Any) -> None:
    """``move_job`` on a row we hold FOR UPDATE: refusing to move means a broken rule, and
    raising rolls back everything this transaction did (a hold, a capture)."""
    if not move_job(session, job, to, allowed, **kwargs):
        raise InvariantViolation(f"job {job.job_id!r} left {allowed} under our row lock")


# ---------------------------------------------------------------- 1. record


def receive(db: Database, spec: JobSpec, catalog: Catalog) -> JobView:
    """Insert the job, or match it against the one already recorded under its job_id.

    Same content: returns the existing job unchanged (``changed`` False). Different
    content: IdempotencyConflict. Unknown member: NotFound. A job that cannot be priced
    (say, a gift denomination the catalog does not offer) is recorded as ``rejected``.
    """
    digest = content_hash(spec)

    def work(session: Session) -> JobView:
        existing = session.scalar(select(Job).where(Job.job_id == spec.job_id))
        if existing is not None:
            if existing.content_hash != digest:
                raise IdempotencyConflict(
                    f"job_id {spec.job_id!r} was already received with different content"
                )
            return view_of(session, existing, changed=False)
        if session.get(Member, spec.member_id) is None:
            raise NotFound("member", spec.member_id)
        status, cost, version, error = JobStatus.RECEIVED, 0, catalog.version, None
        try:
            price = quote(spec.action, catalog=catalog, **price_fields(spec))
            cost, version = price.credits, price.catalog_version
        except InvalidRequest as exc:
            status, error = JobStatus.REJECTED, str(exc)[:MAX_ERROR_LEN]
        now = utcnow()
        job = Job(
            job_id=spec.job_id,
            member_id=spec.member_id,
            flow_id=spec.flow_id,
            step_id=spec.step_id,
            action=spec.action,
            source=spec.source,
            payload=job_dict(spec),
            content_hash=digest,
            cost=cost,
            catalog_version=version,
            status=status.value,
            attempts=0,
            last_error=error,
            created_at=now,
            updated_at=now,
        )
        session.add(job)
        session.flush()  # uq_jobs_job_id decides a race between two deliveries
        session.add(JobTransition(job_pk=job.id, to_status=status.value, detail=error, at=now))
        return view_of(session, job, read_balances=status == JobStatus.REJECTED)

    return run_idempotent(db, "uq_jobs_job_id", work)


# ---------------------------------------------------------------- 2. reserve


def reserve(db: Database, job_id: str, *, hold_ttl_s: float, max_wait_s: float) -> JobView:
    """Take the job's hold, or park it as ``awaiting_credits`` when the member is short.

    Call this under the member's lock: the lock orders reservations, the conditional
    UPDATE in the ledger is what keeps the wallet from going negative.
    """

    def work(session: Session) -> JobView:
        job = get_job(session, job_id, lock=True)
        if job.status not in (JobStatus.RECEIVED, JobStatus.AWAITING_CREDITS):
            return view_of(session, job, changed=False)
        held = None
        if job.cost > 0:
            try:
                # No savepoint needed: a refused hold has written nothing (ledger.post).
                held = hold_in(session, job.job_id, job.member_id, job.cost, ttl_s=hold_ttl_s)
            except InsufficientCredits as exc:
                return _park(session, job, str(exc), max_wait_s)
        _must_move(
            session, job, JobStatus.RESERVED, (JobStatus.RECEIVED, JobStatus.AWAITING_CREDITS)
        )
        return view_of(session, job, balances=held)

    return run_idempotent(db, "uq_holds_job_id", work)


def _park(session: Session, job: Job, reason: str, max_wait_s: float) -> JobView:
    if job.status == JobStatus.AWAITING_CREDITS:
        return view_of(session, job, changed=False, detail=reason)
    expires = utcnow() + timedelta(seconds=max_wait_s)
    _must_move(
        session,
        job,
        JobStatus.AWAITING_CREDITS,
        (JobStatus.RECEIVED,),
        detail=reason,
        wait_expires_at=expires,
    )
    return view_of(session, job, detail=reason)


# ---------------------------------------------------------------- 3. submit


def mark_submitted(db: Database, job_id: str) -> JobView:
    """Record the intent to call the vendor, before calling it: a crash after this point
    leaves a ``submitted`` job that the resolver settles through the vendor's status."""
    with db.unit_of_work() as session:
        job = get_job(session, job_id, lock=True)
        if job.status not in (JobStatus.RESERVED, JobStatus.SUBMITTED):
            return view_of(session, job, changed=False)
        attempts = job.attempts + 1
        if job.status == JobStatus.SUBMITTED:
            job.attempts = attempts
            job.updated_at = utcnow()
            session.flush()
            return view_of(session, job, read_balances=False)
        _must_move(session, job, JobStatus.SUBMITTED, (JobStatus.RESERVED,), attempts=attempts)
        return view_of(session, job, read_balances=False)


def note_error(db: Database, job_id: str, error: str) -> JobView:
    """Record the vendor's last error on the job; returns the job as it now stands."""
    with db.unit_of_work() as session:
        job = get_job(session, job_id)
        job.last_error = error[:MAX_ERROR_LEN]
        job.updated_at = utcnow()
        session.flush()
        return view_of(session, job, changed=False)


# ---------------------------------------------------------------- 4. resolve


def complete(db: Database, job_id: str, *, vendor_ref: str | None = None) -> JobView:
    """The vendor delivered: capture the hold and mark the job completed, exactly once."""
    return _finish(db, job_id, JobStatus.COMPLETED, HoldState.CAPTURED, vendor_ref=vendor_ref)


def refund(db: Database, job_id: str, *, reason: str) -> JobView:
    """The vendor refused the job for good: release the hold and mark it refunded."""
    return _finish(db, job_id, JobStatus.REFUNDED, HoldState.RELEASED, reason=reason)


def _finish(
    db: Database,
    job_id: str,
    to: JobStatus,
    hold_outcome: HoldState,
    *,
    vendor_ref: str | None = None,
    reason: str | None = None,
) -> JobView:
    with db.unit_of_work() as session:
        job = get_job(session, job_id, lock=True)
        if job.status == to:
            return view_of(session, job, changed=False)
        if job.status not in (JobStatus.SUBMITTED, JobStatus.RESERVED):
            raise InvariantViolation(f"job {job_id!r} is {job.status}; it cannot become {to}")
        resolved = resolve_in(session, job_id, hold_outcome) if job.cost > 0 else None
        values: dict[str, Any] = {"vendor_ref": vendor_ref} if vendor_ref else {}
        if reason:
            values["last_error"] = reason[:MAX_ERROR_LEN]
        allowed = (JobStatus.SUBMITTED, JobStatus.RESERVED)
        _must_move(session, job, to, allowed, detail=reason, **values)
        return view_of(session, job, balances=resolved)


# ---------------------------------------------------------------- dead letters and lookups


def record_dead_letter(
    db: Database,
    reason: str,
    *,
    body: str | bytes | None = None,
    task_name: str | None = None,
    message_id: str | None = None,
    job_id: str | None = None,
) -> int:
    with db.unit_of_work() as session:
        letter = DeadLetter(
            reason=reason[:MAX_ERROR_LEN],
            body=None if body is None else printable(body)[:MAX_DEAD_LETTER_BODY],
            task_name=task_name,
            message_id=message_id,
            job_id=job_id[:128] if job_id else None,
            received_at=utcnow(),
        )
        session.add(letter)
        session.flush()
        return letter.id


def printable(raw: str | bytes) -> str:
    """Text any database can store: valid UTF-8 as is, anything else (or a NUL) escaped."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return repr(raw)
    return raw if "\x00" not in raw else repr(raw)


def dead_letters(db: Database, *, limit: int = 50) -> list[dict[str, Any]]:
    with db.unit_of_work() as session:
        rows = session.scalars(select(DeadLetter).order_by(DeadLetter.id.desc()).limit(limit))
        return [
            {
                "id": r.id,
                "reason": r.reason,
                "job_id": r.job_id,
                "task_name": r.task_name,
                "message_id": r.message_id,
                "received_at": r.received_at.isoformat(),
            }
            for r in rows
        ]


def get_view(db: Database, job_id: str) -> JobView:
    with db.unit_of_work() as session:
        return view_of(session, get_job(session, job_id), changed=False)


@dataclass(frozen=True)
class JobReport:
    """Everything ops ask about one job: state, cost, hold, and every state change."""

    job: JobView
    hold: dict[str, Any] | None
    history: list[dict[str, Any]] = field(default_factory=list)
    created_at: datetime | None = None
    vendor_ref: str | None = None

    def as_dict(self) -> dict[str, Any]:
        job = self.job
        return {
            "job_id": job.job_id,
            "member_id": job.member_id,
            "action": job.action,
            "status": job.status,
            "final": job.final,
            "cost": job.cost,
            "catalog_version": job.catalog_version,
            "attempts": job.attempts,
            "flow_id": job.flow_id,
            "step_id": job.step_id,
            "source": job.source,
            "vendor_ref": self.vendor_ref,
            "last_error": job.detail,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "hold": self.hold,
            "history": self.history,
        }


def job_report(db: Database, job_id: str, *, actor: Actor = SUPPORT) -> JobReport:
    with db.unit_of_work() as session:
        job = get_job(session, job_id)
        member = session.get(Member, job.member_id)
        require_member_reader(session, actor, member, get_workspace(session, member.workspace_id))
        hold = session.scalar(select(Hold).where(Hold.job_id == job_id))
        transitions = session.scalars(
            select(JobTransition).where(JobTransition.job_pk == job.id).order_by(JobTransition.id)
        )
        return JobReport(
            view_of(session, job, changed=False),
            None
            if hold is None
            else {
                "amount": hold.amount,
                "state": hold.state,
                "created_at": hold.created_at.isoformat(),
                "expires_at": hold.expires_at.isoformat(),
                "resolved_at": hold.resolved_at.isoformat() if hold.resolved_at else None,
            },
            [
                {
                    "from": t.from_status,
                    "to": t.to_status,
                    "at": t.at.isoformat(),
                    "detail": t.detail,
                }
                for t in transitions
            ],
            job.created_at,
            job.vendor_ref,
        )
