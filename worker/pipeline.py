"""The send pipeline: the steps of DESIGN.md, one unit of work each, vendor call between.

The Celery task stays thin: it hands the message here and turns ``RetryLater`` into a
Celery retry. Everything else -- locks, the ledger steps, the vendor call, the events --
happens in order in :meth:`SendPipeline.process`, and every step is safe to repeat,
because Celery delivers at least once.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

from shared.errors import (
    IdempotencyConflict,
    InvalidRequest,
    NotFound,
    PermanentVendorError,
    TransientVendorError,
    VendorError,
)
from shared.events import Event
from shared.models import JobStatus
from shared.schemas import JobId, parse_job
from shared.services import jobs
from shared.services.jobs import JobView
from worker import metrics
from worker.faults import maybe_crash
from worker.resources import Resources

log = logging.getLogger("credits.pipeline")

LOCK_BUSY_COUNTDOWN_S = (0.2, 1.0)  # another delivery or reservation is running: come back soon
MAX_BODY_LOG = 2000


class RetryLater(Exception):
    """Ask Celery to run this message again after ``countdown_s``."""

    def __init__(self, reason: str, countdown_s: float, *, counts: bool = True) -> None:
        super().__init__(reason)
        self.countdown_s = countdown_s
        self.counts = counts  # vendor errors count against retry_max; lock contention doesn't


@dataclass
class SendPipeline:
    res: Resources

    # ------------------------------------------------------------ entry point

    def process(self, payload: Any, *, message_id: str | None = None) -> dict:
        try:
            spec = parse_job(payload)
        except InvalidRequest as exc:
            return self._dead_letter(str(exc), payload, message_id)
        with self.res.locks.job(spec.job_id) as locked:
            if not locked:
                raise RetryLater("another delivery of this job is running", _busy(), counts=False)
            return self._run(spec, message_id, payload)

    # ------------------------------------------------------------ the steps

    def _run(self, spec, message_id: str | None, payload: Any) -> dict:
        s, db = self.res.settings, self.res.db
        try:
            view = jobs.receive(db, spec, self.res.catalog)
        except IdempotencyConflict as exc:
            return self._dead_letter(str(exc), payload, message_id, job_id=spec.job_id, event=False)
        except NotFound as exc:
            return self._dead_letter(str(exc), payload, message_id, job_id=spec.job_id)
        self._log(view, "received" if view.changed else "redelivered")
        if view.final:
            return self._emit(view)
        if view.status in (JobStatus.RECEIVED, JobStatus.AWAITING_CREDITS):
            with self.res.locks.member(spec.member_id) as locked:
                if not locked:
                    raise RetryLater("member wallet lock busy", _busy(), counts=False)
                view = jobs.reserve(
                    db,
                    spec.job_id,
                    hold_ttl_s=s.hold_ttl_s,
                    max_wait_s=s.awaiting_credits_max_wait_s,
                )
            self._log(view, "reserve")
            if view.changed and view.status == JobStatus.RESERVED:
                metrics.credits_moved("held", view.cost)
            if view.status == JobStatus.AWAITING_CREDITS:
                return self._emit(view)
            maybe_crash(self.res, "after_hold")
        if view.status in (JobStatus.RESERVED, JobStatus.SUBMITTED):
            return self._submit(spec)
        return self._emit(view)

    def _submit(self, spec) -> dict:
        db = self.res.db
        view = jobs.mark_submitted(db, spec.job_id)
        self._log(view, "submit")
        if view.status != JobStatus.SUBMITTED:
            # Someone settled it meanwhile (a sweep, another delivery): never send then.
            return self._emit(view)
        started = time.monotonic()
        try:
            # Outside any transaction: the vendor may take seconds, and a row lock must not.
            sent = self.res.provider.submit(spec, idempotency_key=spec.job_id)
        except VendorError as exc:
            metrics.vendor_call("submit", type(exc).__name__, time.monotonic() - started)
            return self._vendor_failed(spec, view, exc)
        metrics.vendor_call("submit", "ok", time.monotonic() - started)
        maybe_crash(self.res, "after_vendor_accepted")
        maybe_crash(self.res, "before_capture")
        view = jobs.complete(db, spec.job_id, vendor_ref=sent.ref)
        maybe_crash(self.res, "after_capture_before_event")
        return self._emit(view)

    def _vendor_failed(self, spec, view: JobView, exc: VendorError) -> dict:
        db = self.res.db
        if isinstance(exc, PermanentVendorError):
            return self._emit(jobs.refund(db, spec.job_id, reason=str(exc)))
        noted = jobs.note_error(db, spec.job_id, str(exc))
        if isinstance(exc, TransientVendorError):
            # Vendor attempts are counted on the job row, so redeliveries share the budget.
            if view.attempts <= self.res.settings.retry_max:
                raise RetryLater(str(exc), self._backoff(view.attempts - 1)) from exc
            # Out of retries: the hold stays and the resolver asks the vendor later.
            log.error("job %s: vendor failing after %d tries: %s", spec.job_id, view.attempts, exc)
            return self._emit(noted, reason=f"retries exhausted: {exc}")
        # VendorOutcomeUnknown: it may have been sent. Never guess; the resolver will ask.
        return self._emit(noted, reason=f"in doubt: {exc}")

    # ------------------------------------------------------------ outcomes

    def _emit(self, view: JobView, *, reason: str | None = None) -> dict:
        if view.changed:
            record_outcome(view)
        fields = view.event_fields()
        if reason:
            fields["reason"] = reason
        self.res.events.publish(Event(**fields))
        self._log(view, "outcome")
        return {"job_id": view.job_id, "status": view.status, "cost": view.cost}

    def _dead_letter(
        self,
        reason: str,
        payload: Any,
        message_id: str | None,
        *,
        job_id: str | None = None,
        event: bool = True,
    ) -> dict:
        """Keep a message we cannot act on, with its reason. Nobody is charged."""
        job_id = job_id or _guess_job_id(payload)
        body = payload if isinstance(payload, str) else json.dumps(payload, default=str)
        jobs.record_dead_letter(
            self.res.db,
            reason,
            body=body,
            task_name="credits.send_action",
            message_id=message_id,
            job_id=job_id,
        )
        log.warning("dead letter job_id=%s: %s", job_id, reason)
        if event and job_id and not self._job_exists(job_id):
            # The producer should hear why its job went nowhere.
            self.res.events.publish(
                Event(job_id, "rejected", None, 0, None, None, reason=reason[:500])
            )
        return {"job_id": job_id, "status": "dead_letter", "reason": reason}

    def dead_letter_unexpected(
        self, payload: Any, exc: Exception, *, message_id: str | None = None
    ) -> dict:
        """Keep a message that kept failing for an unforeseen reason; the job row, if it
        was recorded, stays where it is for the recovery sweeps."""
        reason = f"unexpected {type(exc).__name__} after retries: {exc}"
        try:
            job_id = parse_job(payload).job_id
        except InvalidRequest:
            job_id = None
        exists = job_id is not None and self._job_exists(job_id)
        return self._dead_letter(reason, payload, message_id, job_id=job_id, event=not exists)

    def _job_exists(self, job_id: str) -> bool:
        try:
            jobs.get_view(self.res.db, job_id)
        except NotFound:
            return False
        return True

    def _backoff(self, retries: int) -> float:
        s = self.res.settings
        ceiling = min(s.retry_backoff_max_s, s.retry_backoff_base_s * 2**retries)
        return random.uniform(ceiling / 2, ceiling)

    def _log(self, view: JobView, step: str) -> None:
        # One line per state change at INFO; replays of done steps only at DEBUG.
        log.log(
            logging.INFO if view.changed else logging.DEBUG,
            "job %s %s: %s",
            view.job_id,
            step,
            view.status,
            extra={
                "job_id": view.job_id,
                "member_id": view.member_id,
                "step": step,
                "status": view.status,
                "cost": view.cost,
                "available": view.available,
                "held": view.held,
                "changed": view.changed,
            },
        )


def record_outcome(view: JobView) -> None:
    """Count a job's new status and the credits it moved (once: only on a real change)."""
    if view.final or view.status == JobStatus.AWAITING_CREDITS:
        metrics.job_outcome(view.status)
    if view.status == JobStatus.COMPLETED:
        metrics.credits_moved("captured", view.cost)
    elif view.status == JobStatus.REFUNDED:
        metrics.credits_moved("released", view.cost)


def _busy() -> float:
    return random.uniform(*LOCK_BUSY_COUNTDOWN_S)


def _guess_job_id(payload: Any) -> str | None:
    """The job_id of a message that failed validation, if it has a usable one."""
    if isinstance(payload, dict):
        candidate = payload.get("job_id")
        if isinstance(candidate, str):
            try:
                from pydantic import TypeAdapter

                return TypeAdapter(JobId).validate_python(candidate)
            except ValueError:
                return None
    return None
