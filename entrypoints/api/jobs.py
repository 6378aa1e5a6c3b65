"""``/v1/jobs``: list and filter jobs, read one, and send an instant action.

A job is sent as the token's member, signed like any producer's
(:class:`shared.client.CreditsClient`), and answered with 202 once the broker has it: the
outcome arrives on ``/v1/events`` and at ``/v1/jobs/{job_id}``. The ``job_id`` is the
idempotency key: sending the same job again charges once, and the same job_id with other
content is a 409 before anything is published.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from functools import cache
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Response
from pydantic import TypeAdapter

from entrypoints.api.auth import Caller, CallerDep, ResourcesDep
from entrypoints.api.models import JobAccepted, JobPage, JobReportOut
from entrypoints.api.problems import responses
from entrypoints.api.state import Resources
from shared.errors import InvalidRequest, NotFound, PermissionDenied
from shared.models import JobStatus
from shared.pricing import catalog_from_settings, quote
from shared.schemas import Job, parse_job, price_fields
from shared.services import directory, job_reports
from shared.services.job_reports import MAX_PAGE, JobFilter

router = APIRouter(prefix="/v1", tags=["jobs"], responses=responses(401, 503))
MemberQuery = Annotated[int | None, Query(gt=0, le=2**63 - 1, description="Whose job.")]


@cache
def job_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    """The job union's JSON schema and its definitions, for the OpenAPI document."""
    schema = TypeAdapter(Job).json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    for definition in defs.values():
        if "member_id" in definition.get("properties", {}):
            # The API fills these in: the member from the token, a job_id if none is given.
            definition["required"] = [f for f in definition.get("required", [])
                                      if f not in ("member_id", "job_id")]  # fmt: skip
    return schema, defs


@router.get("/jobs", response_model=JobPage, summary="Jobs, newest first, filtered and paged",
            responses=responses(403, 404, 422))  # fmt: skip
def list_jobs(
    caller: CallerDep,
    res: ResourcesDep,
    member_id: MemberQuery = None,
    account_id: Annotated[int | None, Query(gt=0, le=2**63 - 1)] = None,
    status: Annotated[JobStatus | None, Query()] = None,
    flow_id: Annotated[str | None, Query(max_length=128)] = None,
    since: Annotated[datetime | None, Query(description="Created at or after (UTC).")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    before: Annotated[int | None, Query(gt=0, description="Page cursor: next_before.")] = None,
) -> dict[str, Any]:
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    filters = JobFilter(member_id=member_id, account_id=account_id, flow_id=flow_id,
                        status=status.value if status else None, since=since, limit=limit,
                        before=before)  # fmt: skip
    return job_reports.list_jobs(res.db, filters, actor=caller.actor)


@router.get("/jobs/{job_id:path}", response_model=JobReportOut,
            summary="One job: status, cost, hold and every state change",
            responses=responses(403, 404, 422))  # fmt: skip
def get_job(
    job_id: Annotated[str, Path(min_length=1, max_length=128)],
    caller: CallerDep,
    res: ResourcesDep,
    member_id: MemberQuery = None,
) -> dict[str, Any]:
    report = job_reports.job_report(res.db, job_id, member_id=member_id, actor=caller.actor)
    return report.as_dict()


@router.post(
    "/jobs",
    response_model=JobAccepted,
    status_code=202,
    summary="Send an instant action as the token's member",
    responses=responses(400, 403, 404, 409, 422),
)
def send_job(
    response: Response,
    caller: CallerDep,
    res: ResourcesDep,
    body: Annotated[dict[str, Any], Body(description="A JobRequest.")],
) -> dict[str, Any]:
    member_id = _sender(caller, res, body.get("member_id"))
    payload = {"source": "instant", **body, "member_id": member_id}
    payload.setdefault("job_id", f"api-{uuid.uuid4().hex}")
    spec = parse_job(payload)
    # Priced now too, so a denomination the catalog does not offer fails here, not later.
    quote(spec.action, catalog=catalog_from_settings(res.settings), **price_fields(spec))
    href = f"/v1/jobs/{spec.job_id}?member_id={member_id}"
    response.headers["Location"] = href
    existing = job_reports.resend_of(res.db, spec, actor=caller.actor)  # 409 on other content
    if existing is not None and existing.final:
        response.status_code = 200
        return {"job_id": spec.job_id, "member_id": member_id, "status": existing.status,
                "replayed": True, "href": href}  # fmt: skip
    res.client.send_action(spec)
    return {"job_id": spec.job_id, "member_id": member_id, "replayed": existing is not None,
            "status": existing.status if existing else "queued", "href": href}  # fmt: skip


def _sender(caller: Caller, res: Resources, named: object) -> int:
    """The member who pays: the token's. Support names one, as with ``credits send``."""
    if caller.member_id is not None:
        if named is not None and named != caller.member_id:
            raise PermissionDenied(f"{caller.actor} may not send on behalf of member {named}")
        return caller.member_id
    if isinstance(named, bool) or not isinstance(named, int) or named <= 0:
        raise InvalidRequest("member_id: a support token sends for a member: name its id")
    with res.db.unit_of_work() as session:
        member = directory.get_member(session, named)
        if not member.active:
            raise NotFound("member", named, hint="deactivated")
    return named
