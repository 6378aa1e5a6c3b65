"""Outcome publishing, defined once: the pipeline, the sweeps and the demo all tell flow
engines through :func:`notifier`, which the job services call after each commit."""

from __future__ import annotations

import logging
from dataclasses import replace

from shared.events import Event
from shared.models import JobStatus
from shared.services.jobs import JobView, Notify
from worker import metrics
from worker.faults import maybe_crash
from worker.resources import Resources

log = logging.getLogger("credits.outcomes")


def record_outcome(view: JobView) -> None:
    """Count a job's new status and the credits it moved (once: only on a real change)."""
    if not view.changed:
        return
    if view.final or view.parked:
        metrics.job_outcome(view.status)
    if view.status == JobStatus.COMPLETED:
        metrics.credits_moved("captured", view.cost)
    elif view.status == JobStatus.REFUNDED:
        metrics.credits_moved("released", view.cost)


def log_outcome(view: JobView) -> None:
    # One line per outcome at INFO; a replay of an outcome already told only at DEBUG.
    log.log(
        logging.INFO if view.changed else logging.DEBUG,
        "job %s of member %s: %s (cost %s)%s",
        view.job_id, view.member_id, view.status, view.cost,
        f": {view.detail}" if view.detail and view.status != "completed" else "",
        extra={"job_id": view.job_id, "member_id": view.member_id, "status": view.status,
               "cost": view.cost, "available": view.available, "held": view.held},
    )  # fmt: skip


def publish(res: Resources, view: JobView, *, reason: str | None = None) -> None:
    """Count, log and publish one outcome (at most once per member, job and status)."""
    if reason:
        view = replace(view, detail=reason)
    record_outcome(view)
    log_outcome(view)
    maybe_crash(res, "after_capture_before_event")
    res.events.publish(Event(**view.event_fields()))


def notifier(res: Resources) -> Notify:
    return lambda view: publish(res, view)
