"""Reading jobs: one job with its hold and history, and filtered, paged listings.

Reads obey the role rules: members see their own jobs, owners and admins every job of
their account, support everything. A job of another account does not exist for anyone
but support.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from shared.db import Database
from shared.errors import IdempotencyConflict, InvalidRequest, NotFound
from shared.models import Hold, Job, JobStatus, JobTransition, Member, Role, Workspace
from shared.schemas import Job as JobSpec
from shared.schemas import content_hash
from shared.services.auth import (
    SUPPORT,
    Actor,
    hide_other_accounts,
    require_member_reader,
    require_workspace_manager,
    scope_of,
)
from shared.services.jobs import JobView, view_of, with_balances

MAX_PAGE = 500
NOT_RECORDED = "a job sent moments ago may still be queued: no worker has recorded it yet"


def find_job(
    session: Session, member_id: int | None, job_id: str, *, actor: Actor, manage: bool = False
) -> Job:
    """The job of ``member_id`` (or of the acting member) named ``job_id``.

    Support may leave the member out when only one member has that job_id. ``manage``
    asks for the right to change the job (its member, or whoever manages their
    workspace) instead of the right to read it.
    """
    if member_id is None and actor.member_id is not None:
        member_id = actor.member_id
    query = select(Job).where(Job.job_id == job_id).limit(2)
    if member_id is not None:
        query = query.where(Job.member_id == member_id)
    found = list(session.scalars(query))
    if len(found) > 1:
        raise InvalidRequest(f"job_id {job_id!r} belongs to several members: name the member")
    if not found:
        raise NotFound("job", job_id, hint=NOT_RECORDED)
    job = found[0]
    member = session.get(Member, job.member_id)
    workspace = session.get(Workspace, member.workspace_id)
    if actor.member_id is not None and scope_of(session, actor).account_id != workspace.account_id:
        raise NotFound("job", job_id, hint=NOT_RECORDED)
    if manage and actor.member_id != member.id:
        require_workspace_manager(session, actor, workspace, f"change job {job_id!r}")
    else:
        require_member_reader(session, actor, member, workspace)
    return job


def resend_of(db: Database, spec: JobSpec, *, actor: Actor = SUPPORT) -> JobView | None:
    """The job a re-send of ``spec`` would replay: None if new, IdempotencyConflict if the
    member already sent this job_id with other content."""
    with db.unit_of_work() as session:
        try:
            job = find_job(session, spec.member_id, spec.job_id, actor=actor)
        except NotFound:
            return None
        if job.content_hash != content_hash(spec):
            raise IdempotencyConflict(
                f"job_id {spec.job_id!r} of member {spec.member_id} was already sent with "
                "different content"
            )
        return with_balances(session, view_of(job, changed=False))


def get_view(db: Database, member_id: int, job_id: str, *, actor: Actor = SUPPORT) -> JobView:
    with db.unit_of_work() as session:
        job = find_job(session, member_id, job_id, actor=actor)
        return with_balances(session, view_of(job, changed=False))


@dataclass(frozen=True)
class JobReport:
    """Everything ops ask about one job: state, cost, hold, and every state change."""

    job: JobView
    hold: dict[str, Any] | None
    history: list[dict[str, Any]] = field(default_factory=list)
    created_at: datetime | None = None
    updated_at: datetime | None = None
    vendor_ref: str | None = None
    key_id: str | None = None

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
            "key_id": self.key_id,
            "last_error": job.detail,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
            "hold": self.hold,
            "history": self.history,
        }


def job_report(
    db: Database, job_id: str, *, member_id: int | None = None, actor: Actor = SUPPORT
) -> JobReport:
    with db.unit_of_work() as session:
        job = find_job(session, member_id, job_id, actor=actor)
        hold = session.scalar(
            select(Hold)
            .join(Member, Member.wallet_id == Hold.wallet_id)
            .where(Member.id == job.member_id, Hold.job_id == job.job_id)
        )
        transitions = session.scalars(
            select(JobTransition).where(JobTransition.job_pk == job.id).order_by(JobTransition.id)
        )
        return JobReport(
            view_of(job, changed=False),
            None if hold is None else _hold_dict(hold),
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
            job.updated_at,
            job.vendor_ref,
            job.key_id,
        )


def _hold_dict(hold: Hold) -> dict[str, Any]:
    return {
        "amount": hold.amount,
        "state": hold.state,
        "created_at": hold.created_at.isoformat(),
        "expires_at": hold.expires_at.isoformat(),
        "resolved_at": hold.resolved_at.isoformat() if hold.resolved_at else None,
    }


@dataclass(frozen=True)
class JobFilter:
    member_id: int | None = None
    account_id: int | None = None
    status: str | None = None
    flow_id: str | None = None
    since: datetime | None = None
    limit: int = 50
    before: int | None = None  # page cursor: jobs with a smaller internal id

    def check(self) -> JobFilter:
        if self.status is not None and self.status not in {s.value for s in JobStatus}:
            allowed = ", ".join(s.value for s in JobStatus)
            raise InvalidRequest(f"status {self.status!r} is not one of {allowed}")
        if not 1 <= self.limit <= MAX_PAGE:
            raise InvalidRequest(f"limit must be from 1 to {MAX_PAGE}, got {self.limit}")
        return self


def list_jobs(db: Database, filters: JobFilter, *, actor: Actor = SUPPORT) -> dict[str, Any]:
    """Jobs newest first, one page; ``next_before`` fetches the next."""
    filters = filters.check()
    with db.unit_of_work() as session:
        query = _visible_jobs(session, actor, filters)
        if filters.status:
            query = query.where(Job.status == filters.status)
        if filters.flow_id:
            query = query.where(Job.flow_id == filters.flow_id)
        if filters.since:
            query = query.where(Job.created_at >= filters.since)
        if filters.before:
            query = query.where(Job.id < filters.before)
        rows = list(session.scalars(query.order_by(Job.id.desc()).limit(filters.limit + 1)))
        page = rows[: filters.limit]
        return {
            "jobs": [_job_row(job) for job in page],
            "next_before": page[-1].id if len(rows) > filters.limit else None,
        }


def _visible_jobs(session: Session, actor: Actor, filters: JobFilter) -> Select[Any]:
    """The jobs the actor may read, narrowed to a member or an account if asked."""
    query = select(Job)
    if filters.member_id is not None:
        member = session.get(Member, filters.member_id)
        if member is None:
            raise NotFound("member", filters.member_id)
        workspace = session.get(Workspace, member.workspace_id)
        hide_other_accounts(session, actor, "member", filters.member_id, workspace.account_id)
        require_member_reader(session, actor, member, workspace)
        query = query.where(Job.member_id == member.id)
    in_account = (
        select(Member.id)
        .join(Workspace, Workspace.id == Member.workspace_id)
        .where(Workspace.account_id == filters.account_id)
    )
    if filters.account_id is not None:
        query = query.where(Job.member_id.in_(in_account))
    if actor.member_id is None or filters.member_id is not None:
        return query
    scope = scope_of(session, actor)
    if scope.role == Role.MEMBER:
        return query.where(Job.member_id == actor.member_id)
    own_account = (
        select(Member.id)
        .join(Workspace, Workspace.id == Member.workspace_id)
        .where(Workspace.account_id == scope.account_id)
    )
    return query.where(Job.member_id.in_(own_account))


def _job_row(job: Job) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "member_id": job.member_id,
        "action": job.action,
        "status": job.status,
        "cost": job.cost,
        "flow_id": job.flow_id,
        "attempts": job.attempts,
        "created_at": job.created_at.isoformat(),
        "updated_at": job.updated_at.isoformat(),
        "last_error": job.last_error,
        "cursor": job.id,
    }
