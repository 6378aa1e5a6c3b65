"""Outcome events: what a flow engine hears about each of its jobs.

An event says a job's new status, with its member, cost and the member's balance after
it. It is published at most once per (member, job_id, status) on a Redis stream
(:mod:`shared.adapters.events`). Final statuses never change again; ``awaiting_credits``
(parked) is not final, and neither is an in-doubt ``submitted``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from shared.models import FINAL_JOB_STATUSES, JobStatus

FINAL_STATUSES = tuple(sorted(s.value for s in FINAL_JOB_STATUSES))
PARKED = JobStatus.AWAITING_CREDITS.value
INT_FIELDS = ("member_id", "cost", "available", "held")


@dataclass(frozen=True)
class Event:
    job_id: str
    status: str
    member_id: int | None
    cost: int
    available: int | None
    held: int | None
    flow_id: str | None = None
    step_id: str | None = None
    reason: str | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    def fields(self) -> dict[str, str]:
        data = {k: v for k, v in asdict(self).items() if v is not None}
        data["final"] = "1" if self.final else "0"
        data["at"] = f"{time.time():.6f}"
        return {k: str(v) for k, v in data.items()}


def typed(fields: dict[str, str]) -> dict[str, object]:
    """An event as read from the stream (all strings) with numbers and flags typed."""
    out: dict[str, object] = dict(fields)
    for key in INT_FIELDS:
        if key in fields:
            out[key] = int(fields[key])
    if "final" in fields:
        out["final"] = fields["final"] == "1"
    if "at" in fields:
        out["at"] = float(fields["at"])
    return out


def is_outcome_for(fields: dict[str, str], member_id: int, job_id: str) -> bool:
    """An event that ends a wait for this member's job: final, or parked."""
    return (
        fields.get("job_id") == job_id
        and fields.get("member_id") == str(member_id)
        and (fields.get("final") == "1" or fields.get("status") == PARKED)
    )
