"""Send-action jobs: the state machine, one unit of work per step.

A job is identified by its member and the producer's ``job_id``: the same job_id from two
members is two jobs. The worker runs two steps on the happy path, with the vendor call
between them, outside any transaction:

    accept:  record ──> price ──> hold ──> submitted        (one transaction)
    settle:  capture ──> completed   or   release ──> refunded

    received ──> reserved ──> submitted ──> completed   (hold captured)
        │            ^             └──────> refunded    (hold released)
        ├──> awaiting_credits ──> expired | cancelled   (no hold was taken)
        └──> rejected                                    (never priced: nothing charged)

Every step is a conditional state change on a row locked FOR UPDATE, so a redelivered
message, a retry, a second worker or a sweep replays what is done and moves on. Outcomes
that a flow engine must hear (final or parked) go to ``notify`` after the commit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from shared.db import Database, UnitOfWork
from shared.errors import (
    IdempotencyConflict,
    InsufficientCredits,
    InvalidRequest,
    InvariantViolation,
    JobBusy,
    NotFound,
)
from shared.models import (
    FINAL_JOB_STATUSES,
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
from shared.services.holds import HoldResult, hold_in, resolve_in
from shared.services.idempotency import run_idempotent
from shared.services.row_locks import lock_job

JOB_CONSTRAINT = "uq_jobs_member_id_job_id"
MAX_ERROR_LEN = 1000  # job_transitions.detail and jobs.last_error are cut to this

S = JobStatus
SETTLEABLE = (S.SUBMITTED, S.RESERVED)


@dataclass(frozen=True)
class JobView:
    """A job as the pipeline and the flow engine see it, with the member's balance."""

    pk: int
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
    available: int | None = None
    held: int | None = None
    changed: bool = True  # False when this call found the step already done
    detail: str | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL_JOB_STATUSES

    @property
    def parked(self) -> bool:
        return self.status == S.AWAITING_CREDITS

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


# Called after the commit with every final or parked outcome, replays included (the event
# stream drops repeats), so a redelivery after a crash before the event still tells.
Notify = Callable[[JobView], None]


def cut(text: str | None) -> str | None:
    return None if text is None else text[:MAX_ERROR_LEN]


def view_of(
    job: Any,
    *,
    changed: bool = True,
    detail: str | None = None,
    balances: HoldResult | Any | None = None,
) -> JobView:
    """A view of a job row (ORM object or Core row) with the balances given, if any."""
    return JobView(
        job.id,
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
        balances.available if balances is not None else None,
        balances.held if balances is not None else None,
        changed,
        detail or job.last_error,
    )


# Statements of the hot path, built once: constructing a statement costs more CPU than
# running it. They return only the columns a view, a move or the lease check reads.
_J, _JT, _M, _W = Job.__table__, JobTransition.__table__, Member.__table__, Wallet.__table__
_VIEW = [_J.c[name] for name in ("id", "job_id", "member_id", "action", "status", "cost",
         "catalog_version", "attempts", "flow_id", "step_id", "source", "last_error",
         "content_hash", "next_attempt_at")]  # fmt: skip
_BALANCES = (
    select(_W.c.available, _W.c.held)
    .join(_M, _M.c.wallet_id == _W.c.id)
    .where(_M.c.id == bindparam("member"))
)
_ACTIVE_MEMBER_WALLET = select(_M.c.wallet_id).where(
    _M.c.id == bindparam("member"), _M.c.active.is_(True)
)
_EXISTING_JOB = (
    select(*_VIEW)
    .where(_J.c.member_id == bindparam("member"), _J.c.job_id == bindparam("job_id"))
    .with_for_update()
)
_LOCK_WITH_WALLET = (
    select(*_VIEW, _M.c.wallet_id.label("wallet_id"))
    .join(_M, _M.c.id == _J.c.member_id)
    .where(_J.c.id == bindparam("pk"))
    .with_for_update(of=_J)
)
# Settling needs no wait for the commit's flush to disk (PostgreSQL): if the server dies
# before it, the job is back to submitted with its hold, and the resolver settles it again
# from the vendor's own record. Accepting, which comes before the vendor is called, is
# always flushed. Asked for in the same statement as the lock, so it costs no round trip.
_SETTLE_LOCK = {
    "postgresql": _LOCK_WITH_WALLET.add_columns(
        func.set_config("synchronous_commit", "off", True).label("async_commit")
    ),
    "sqlite": _LOCK_WITH_WALLET,
}
_MOVE = (
    update(_J)
    .where(_J.c.id == bindparam("pk"), _J.c.status.in_(bindparam("allowed", expanding=True)))
    .returning(*_VIEW)
)
_NOTE = update(_J).where(_J.c.id == bindparam("pk")).returning(*_VIEW)
_INSERT_TRANSITIONS = insert(_JT)
_INSERT_JOB = {
    name: dialect.insert(_J)
    .on_conflict_do_nothing(index_elements=["member_id", "job_id"])
    .returning(*_VIEW)
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
}


def with_balances(session: Session, view: JobView) -> JobView:
    """The view with its member's current balance (one query), for an event."""
    wallet = session.connection().execute(_BALANCES, {"member": view.member_id}).one()
    return replace(view, available=wallet.available, held=wallet.held)


def tell(session: UnitOfWork, view: JobView, notify: Notify | None) -> JobView:
    """Hand a final or parked outcome to ``notify`` once the transaction has committed."""
    if notify is not None and (view.final or view.parked):
        if view.available is None:
            view = with_balances(session, view)
        session.after_commit(lambda: notify(view))
    return view


def move_job(
    session: Session,
    job: Any,
    to: JobStatus,
    allowed_from: tuple[JobStatus, ...],
    *,
    detail: str | None = None,
    via: tuple[JobStatus, ...] = (),
    new: bool = False,
    **values: Any,
) -> Any | None:
    """Change a job's status only if it is still in ``allowed_from``, and log the change
    (through the statuses in ``via`` first, so the history shows every step; ``new``: the
    job was just recorded in this transaction, and its first state is logged too).

    Returns the job row as it now is, or None when the row was no longer in
    ``allowed_from`` (someone else moved it first).
    """
    now = utcnow()
    conn = session.connection()
    row = conn.execute(
        _MOVE,
        {"pk": job.id, "allowed": [s.value for s in allowed_from], "status": to.value,
         "updated_at": now, **values},
    ).one_or_none()  # fmt: skip
    if row is None:
        return None
    steps = [None] * new + [job.status, *(s.value for s in via), to.value]
    conn.execute(
        _INSERT_TRANSITIONS,
        [
            {
                "job_pk": job.id,
                "from_status": a,
                "to_status": b,
                "at": now,
                "detail": cut(detail) if b == to.value else None,
            }
            for a, b in pairwise(steps)
        ],
    )
    return row


def _must_move(session: Session, job: Any, to: JobStatus, allowed: tuple, **kwargs: Any) -> Any:
    """``move_job`` on a row we hold FOR UPDATE: refusing to move means a broken rule, and
    raising rolls back everything this transaction did (a hold, a capture)."""
    row = move_job(session, job, to, allowed, **kwargs)
    if row is None:
        raise InvariantViolation(f"job {job.job_id!r} left {allowed} under our row lock")
    return row


# ---------------------------------------------------------------- 1. accept


@dataclass(frozen=True)
class Priced:
    cost: int
    catalog_version: str
    error: str | None  # why it could not be priced: the job is rejected, nobody charged


def price(spec: JobSpec, catalog: Catalog) -> Priced:
    try:
        found = quote(spec.action, catalog=catalog, **price_fields(spec))
    except InvalidRequest as exc:
        return Priced(0, catalog.version, cut(str(exc)))
    return Priced(found.credits, found.catalog_version, None)


def accept(
    db: Database,
    spec: JobSpec,
    catalog: Catalog,
    *,
    hold_ttl_s: float,
    max_wait_s: float,
    attempt_window_s: float,
    key_id: str | None = None,
    notify: Notify | None = None,
) -> JobView:
    """Record the job, price it, hold its cost and mark it submitted: one transaction.

    Call it under the member's lock: the lock orders reservations, the conditional UPDATE
    in the ledger is what keeps the wallet from going negative.

    - a new job is recorded (a job that cannot be priced is recorded ``rejected``);
    - the same member and job_id with the same content replays; with other content it is
      an IdempotencyConflict, and an unknown or deactivated member is NotFound;
    - a job the member cannot pay for yet is parked as ``awaiting_credits``;
    - a job already ``submitted`` (a retry) counts one more vendor attempt, unless
      another attempt holds its lease: JobBusy.
    The result is ``submitted`` when the caller should now call the vendor; the job then
    records that this attempt may run for ``attempt_window_s``: its lease, which keeps a
    second delivery of the message and the resolver away while the vendor is called.
    """
    digest = content_hash(spec)
    priced = price(spec, catalog)

    def work(session: UnitOfWork) -> JobView:
        wallet_id = _active_member_wallet(session, spec.member_id)
        job, created = _record(session, spec, digest, priced, key_id)
        now = utcnow()
        window = now + timedelta(seconds=attempt_window_s)
        if job.status == S.SUBMITTED and _leased(job, now):
            raise JobBusy(f"job {job.job_id!r} of member {job.member_id} is being attempted")
        if job.status in (S.RECEIVED, S.AWAITING_CREDITS):
            return _reserve_and_submit(session, job, wallet_id, hold_ttl_s, max_wait_s,
                                       window, notify, created)  # fmt: skip
        if job.status in (S.RESERVED, S.SUBMITTED):
            return _count_attempt(session, job, window)
        return tell(session, view_of(job, changed=created), notify)

    return run_idempotent(db, JOB_CONSTRAINT, work, replay_refusals=False)


# A retry's message may arrive a little before the time recorded for it.
LEASE_TOLERANCE = timedelta(seconds=2)


def _leased(job: Any, now: datetime) -> bool:
    """Someone holds this job's lease: an attempt runs until ``next_attempt_at`` (or a
    retry is due then, or the resolver is asking the vendor about it)."""
    return job.next_attempt_at is not None and job.next_attempt_at > now + LEASE_TOLERANCE


def _active_member_wallet(session: Session, member_id: int) -> int:
    row = session.connection().execute(_ACTIVE_MEMBER_WALLET, {"member": member_id}).one_or_none()
    if row is None:
        raise NotFound("member", member_id)
    return row.wallet_id


def _record(session: Session, spec: JobSpec, digest: str, priced: Priced, key_id: str | None):
    """Insert the job, or lock and match the one already recorded; (row, created).

    A new job's first transition is logged with its next move (one statement), or here
    when it stays where it was recorded (rejected).
    """
    now = utcnow()
    status = S.REJECTED if priced.error else S.RECEIVED
    conn = session.connection()
    row = conn.execute(
        _INSERT_JOB[conn.dialect.name],
        {
            "job_id": spec.job_id,
            "member_id": spec.member_id,
            "flow_id": spec.flow_id,
            "step_id": spec.step_id,
            "action": spec.action,
            "source": spec.source,
            "payload": job_dict(spec),
            "content_hash": digest,
            "cost": priced.cost,
            "catalog_version": priced.catalog_version,
            "status": status.value,
            "attempts": 0,
            "republished": 0,
            "key_id": key_id,
            "last_error": priced.error,
            "created_at": now,
            "updated_at": now,
        },
    ).one_or_none()
    if row is not None:
        if status == S.REJECTED:
            conn.execute(
                _INSERT_TRANSITIONS,
                {"job_pk": row.id, "from_status": None, "to_status": row.status,
                 "detail": priced.error, "at": now},
            )  # fmt: skip
        return row, True
    existing = conn.execute(_EXISTING_JOB, {"member": spec.member_id, "job_id": spec.job_id}).one()
    if existing.content_hash != digest:
        raise IdempotencyConflict(
            f"job_id {spec.job_id!r} of member {spec.member_id} was already received "
            "with different content"
        )
    return existing, False


def _reserve_and_submit(
    session: UnitOfWork, job: Any, wallet_id: int, ttl_s: float, max_wait_s: float,
    window: datetime, notify: Notify | None, created: bool,
) -> JobView:  # fmt: skip
    held = None
    if job.cost > 0:
        try:
            # No savepoint needed: a refused hold has written nothing (posting.post). A job
            # received or parked has no hold: it takes one only on its way to submitted.
            held = hold_in(session, job.job_id, wallet_id, job.cost, ttl_s=ttl_s,
                           known_new=True)  # fmt: skip
        except InsufficientCredits as exc:
            return _park(session, job, str(exc), max_wait_s, notify, created)
    row = _must_move(
        session, job, S.SUBMITTED, (S.RECEIVED, S.AWAITING_CREDITS),
        via=(S.RESERVED,), new=created, attempts=job.attempts + 1, wait_expires_at=None,
        next_attempt_at=window, last_error=None,
    )  # fmt: skip
    return view_of(row, balances=held)


def _park(
    session: UnitOfWork, job: Any, reason: str, max_wait_s: float, notify, created: bool
) -> JobView:
    if job.status == S.AWAITING_CREDITS:
        return tell(session, view_of(job, changed=False, detail=reason), notify)
    expires = utcnow() + timedelta(seconds=max_wait_s)
    row = _must_move(
        session, job, S.AWAITING_CREDITS, (S.RECEIVED,), detail=reason, new=created,
        wait_expires_at=expires, last_error=cut(reason),
    )  # fmt: skip
    return tell(session, view_of(row, detail=reason), notify)


def _count_attempt(session: Session, job: Any, window: datetime) -> JobView:
    """One more vendor attempt of a job already holding its credits (a retry)."""
    row = _must_move(
        session, job, S.SUBMITTED, (S.RESERVED, S.SUBMITTED),
        attempts=job.attempts + 1, next_attempt_at=window,
    )  # fmt: skip
    return view_of(row, changed=job.status != S.SUBMITTED)


# ---------------------------------------------------------------- 2. settle


def complete(
    db: Database, pk: int, *, vendor_ref: str | None = None, notify: Notify | None = None
) -> JobView:
    """The vendor delivered: capture the hold and mark the job completed, exactly once."""
    values = {"vendor_ref": vendor_ref} if vendor_ref else {}
    return _settle(db, pk, S.COMPLETED, HoldState.CAPTURED, notify, last_error=None, **values)


def refund(db: Database, pk: int, *, reason: str, notify: Notify | None = None) -> JobView:
    """The vendor refused the job for good (or never got it): release the hold, refunded."""
    return _settle(
        db, pk, S.REFUNDED, HoldState.RELEASED, notify, detail=reason, last_error=cut(reason)
    )


def _settle(db: Database, pk: int, to: JobStatus, outcome: HoldState, notify, **values):
    with db.unit_of_work() as session:
        conn = session.connection()
        job = conn.execute(_SETTLE_LOCK[conn.dialect.name], {"pk": pk}).one_or_none()
        if job is None:
            raise NotFound("job", pk)
        if job.status == to:
            view = tell(session, view_of(job, changed=False), notify)
        elif job.status not in SETTLEABLE:
            raise InvariantViolation(f"job {job.job_id!r} is {job.status}; it cannot become {to}")
        else:
            resolved = None
            if job.cost > 0:
                resolved = resolve_in(session, job.job_id, job.wallet_id, outcome)
            row = _must_move(session, job, to, SETTLEABLE, **values)
            view = tell(session, view_of(row, balances=resolved), notify)
        session.commit()
        return view


def exists(db: Database, member_id: int, job_id: str) -> None:
    """NotFound unless this member has a job with this job_id."""
    with db.unit_of_work() as session:
        found = session.scalar(
            select(Job.id).where(Job.member_id == member_id, Job.job_id == job_id)
        )
        if found is None:
            raise NotFound("job", job_id)


def note_error(db: Database, pk: int, error: str, *, retry_at: datetime | None = None) -> JobView:
    """Record the vendor's last error, and when the next attempt is due: ``retry_at`` for
    a retry on its way, None when no worker will try again (the resolver's turn)."""
    with db.unit_of_work() as session:
        row = (
            session.connection()
            .execute(
                _NOTE,
                {
                    "pk": pk,
                    "last_error": cut(error),
                    "next_attempt_at": retry_at,
                    "updated_at": utcnow(),
                },
            )
            .one_or_none()
        )
        if row is None:
            raise NotFound("job", pk)
        session.commit()
        return view_of(row, changed=False)


def cancel(db: Database, member_id: int, job_id: str, *, actor, notify: Notify | None = None):
    """Cancel a parked job: it holds nothing, so nothing is released; it ends ``cancelled``."""
    from shared.services.job_reports import find_job  # reads obey the role rules

    with db.unit_of_work() as session:
        job = find_job(session, member_id, job_id, actor=actor, manage=True)
        locked = lock_job(session, job.id)
        if locked.status == S.CANCELLED:
            view = view_of(locked, changed=False)
        else:
            row = move_job(session, locked, S.CANCELLED, (S.AWAITING_CREDITS,),
                           detail=f"cancelled by {actor}", last_error=None)  # fmt: skip
            if row is None:
                raise InvalidRequest(
                    f"job {job_id!r} is {locked.status}: only a job awaiting credits can be "
                    "cancelled"
                )
            view = view_of(row)
        view = tell(session, view, notify)
        session.commit()
        return view


def cancel_parked_in(
    session: UnitOfWork, member_id: int, reason: str, notify: Notify | None
) -> int:
    """Cancel every parked job of a member (deactivation); returns how many."""
    parked = session.scalars(
        select(Job)
        .where(Job.member_id == member_id, Job.status == S.AWAITING_CREDITS.value)
        .with_for_update()
    ).all()
    for job in parked:
        row = _must_move(session, job, S.CANCELLED, (S.AWAITING_CREDITS,), detail=reason,
                         last_error=None)  # fmt: skip
        tell(session, view_of(row, detail=reason), notify)
    return len(parked)
