"""The send pipeline: the steps of DESIGN.md, one unit of work each, vendor call between.

    0. verify the producer's signature            -> dead letter if missing or wrong
    1. accept: record, price, hold, mark submitted -> one transaction, under the member lock;
       it also takes the job's lease, so a second delivery of the message waits (JobBusy)
    2. the vendor, outside any transaction
    3. settle: capture (completed) or release (refunded) -> one transaction
    4. the outcome event, after the commit (the job services call ``notify``)

The task stays thin: it hands the message here; ``LockBusy`` and ``RetryLater`` become
retries in :class:`worker.tasks.base.CreditsTask`. Every step is safe to repeat, because
Celery delivers at least once.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import TypeAdapter, ValidationError
from redis import RedisError

from shared.adapters import intake
from shared.errors import (
    IdempotencyConflict,
    InvalidRequest,
    JobBusy,
    JobNotAuthentic,
    NotFound,
    PermanentVendorError,
    TransientVendorError,
    VendorError,
)
from shared.events import Event
from shared.models import JobStatus, utcnow
from shared.schemas import Job as JobSpec
from shared.schemas import JobId, parse_job
from shared.services import jobs
from shared.services.dead_letters import record_dead_letter
from shared.services.jobs import JobView
from shared.services.recovery import vendor_key
from shared.signing import verify
from worker import metrics
from worker.faults import maybe_crash
from worker.outcomes import notifier
from worker.resources import Resources
from worker.retry import LockBusy, RetryLater, backoff_s

log = logging.getLogger("credits.pipeline")

MESSAGE_KWARGS = frozenset({"job", "auth", "retries"})
_JOB_ID = TypeAdapter(JobId)


@dataclass
class SendPipeline:
    res: Resources

    # ------------------------------------------------------------ entry point

    def process(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        message_id: str | None = None,
        queue: str | None = None,
    ) -> dict:
        """Run one ``credits.send_action`` message; anything malformed is a dead letter."""
        where = {"message_id": message_id, "queue": queue}
        unexpected = sorted(set(kwargs) - MESSAGE_KWARGS)
        if args or unexpected:
            what = f"{len(args)} positional argument(s)" if args else f"arguments {unexpected}"
            return self._dead_letter(f"unexpected {what}", kwargs or list(args), **where)
        job = kwargs.get("job")
        try:
            # Before anything else: an unsigned or forged job charges nobody.
            key_id = verify(job, kwargs.get("auth"), self.res.verify_keys)
        except JobNotAuthentic as exc:
            return self._dead_letter(str(exc), job, tell=False, **where)
        if self.res.settings.intake_outbox:
            self._forget_intake(job, kwargs.get("auth"))
        try:
            spec = parse_job(job)
        except InvalidRequest as exc:
            return self._dead_letter(str(exc), job, **where)
        return self._run(spec, key_id, job, where)

    def _forget_intake(self, job: Any, auth: Any) -> None:
        """Remove the job's intake entry (Redis broker only): the task has started.

        Safe because kombu's Redis transport records a message in its ``unacked`` hash
        (QoS.append) before it hands the message to a worker process, and with acks_late
        keeps it there until the task has ended; from here on kombu's own restore (after
        the visibility timeout) brings the message back if this worker dies. The window
        the entry covers is the one before that: a worker killed between its BRPOP and
        that record loses the message (https://github.com/celery/kombu/issues/305).
        A failure here must not fail the job: the intake sweep then finds the job's row
        in PostgreSQL and drops the entry itself.
        """
        try:
            intake.forget(self.res.redis, self.res.settings.key_prefix, job, auth)
        except RedisError as exc:
            job_id = job.get("job_id") if isinstance(job, dict) else None
            log.warning("job %s: intake entry not removed (the sweep will): %s",
                        job_id, type(exc).__name__)  # fmt: skip

    # ------------------------------------------------------------ the steps

    def _run(self, spec: JobSpec, key_id: str, job: dict, where: dict[str, Any]) -> dict:
        s = self.res.settings
        needs_credits = jobs.price(spec, self.res.catalog).cost > 0
        member_lock = self.res.locks.member(spec.member_id) if needs_credits else nullcontext(True)
        with member_lock as locked:
            if not locked:
                raise LockBusy("member wallet lock busy")
            try:
                view = jobs.accept(
                    self.res.db, spec, self.res.catalog,
                    hold_ttl_s=s.hold_ttl_s, max_wait_s=s.awaiting_credits_max_wait_s,
                    attempt_window_s=s.job_lock_timeout_s, key_id=key_id,
                    notify=notifier(self.res),
                )  # fmt: skip
            except JobBusy as exc:
                # Another delivery of this job holds its lease (set by accept for the
                # length of one vendor call): come back when it is done.
                raise LockBusy(str(exc)) from None
            except IdempotencyConflict as exc:
                return self._dead_letter(str(exc), job, spec=spec, tell=False, **where)
            except NotFound as exc:
                return self._dead_letter(str(exc), job, spec=spec, **where)
        if view.status != JobStatus.SUBMITTED:
            return _result(view)  # final or parked: already told
        if view.changed and view.cost:
            metrics.credits_moved("held", view.cost)
        maybe_crash(self.res, "after_hold")
        return self._call_vendor(spec, view)

    def _call_vendor(self, spec: JobSpec, view: JobView) -> dict:
        started = time.monotonic()
        try:
            # Outside any transaction: the vendor may take seconds, and a row lock must not.
            sent = self.res.provider.submit(
                spec, idempotency_key=vendor_key(spec.member_id, spec.job_id)
            )
        except VendorError as exc:
            metrics.vendor_call("submit", type(exc).__name__, time.monotonic() - started)
            return self._vendor_failed(view, exc)
        metrics.vendor_call("submit", "ok", time.monotonic() - started)
        maybe_crash(self.res, "after_vendor_accepted")
        maybe_crash(self.res, "before_capture")
        done = jobs.complete(self.res.db, view.pk, vendor_ref=sent.ref, notify=notifier(self.res))
        return _result(done)

    def _vendor_failed(self, view: JobView, exc: VendorError) -> dict:
        s, db = self.res.settings, self.res.db
        if isinstance(exc, PermanentVendorError):
            return _result(jobs.refund(db, view.pk, reason=str(exc), notify=notifier(self.res)))
        if isinstance(exc, TransientVendorError) and view.attempts <= s.retry_max:
            # Vendor attempts are counted on the job row, so redeliveries share the budget;
            # the row says when the retry is due, so the resolver leaves the job alone.
            countdown = backoff_s(view.attempts - 1, s.retry_backoff_base_s, s.retry_backoff_max_s)
            jobs.note_error(db, view.pk, str(exc),
                            retry_at=utcnow() + timedelta(seconds=countdown))  # fmt: skip
            raise RetryLater(str(exc), countdown) from exc
        if isinstance(exc, TransientVendorError):
            error = f"vendor still failing after {view.attempts} attempts: {exc}"
            log.error("job %s of member %s: %s", view.job_id, view.member_id, error)
        else:  # VendorOutcomeUnknown: it may have been sent. Never guess; the resolver asks.
            error = f"in doubt: {exc}"
            log.warning("job %s of member %s: %s", view.job_id, view.member_id, error)
        return _result(jobs.note_error(db, view.pk, error))

    # ------------------------------------------------------------ messages we cannot act on

    def _dead_letter(
        self,
        reason: str,
        payload: Any,
        *,
        spec: JobSpec | None = None,
        tell: bool = True,
        message_id: str | None = None,
        queue: str | None = None,
    ) -> dict:
        """Keep a message we cannot act on, with its reason. Nobody is charged.

        With ``tell``, a producer waiting on a usable (member, job_id) hears ``rejected``
        -- unless that job exists, in which case its own outcome is what counts.
        """
        member_id, job_id = _ids(payload, spec)
        body = payload if isinstance(payload, str) else json.dumps(payload, default=str)
        record_dead_letter(
            self.res.db, reason, body=body, task_name="credits.send_action",
            message_id=message_id, job_id=job_id, member_id=member_id, queue=queue,
        )  # fmt: skip
        log.warning("dead letter: job %s of member %s: %s", job_id, member_id, reason)
        if tell and job_id and member_id and not self._job_exists(member_id, job_id):
            self.res.events.publish(
                Event(job_id, "rejected", member_id, 0, None, None, reason=reason[:500])
            )
        return {"job_id": job_id, "member_id": member_id, "status": "dead_letter",
                "reason": reason}  # fmt: skip

    def dead_letter_unexpected(
        self, kwargs: dict[str, Any], exc: Exception, *, message_id: str | None = None
    ) -> dict:
        """Keep a message that kept failing for an unforeseen reason; the job row, if it
        was recorded, stays where it is for the recovery sweeps."""
        reason = f"unexpected {type(exc).__name__} after retries: {exc}"
        job = kwargs.get("job")
        member_id, job_id = _ids(job, None)
        exists = bool(job_id and member_id and self._job_exists(member_id, job_id))
        return self._dead_letter(reason, job, tell=not exists, message_id=message_id)

    def _job_exists(self, member_id: int, job_id: str) -> bool:
        try:
            jobs.exists(self.res.db, member_id, job_id)
        except NotFound:
            return False
        return True


def _result(view: JobView) -> dict:
    return {"job_id": view.job_id, "member_id": view.member_id, "status": view.status,
            "cost": view.cost}  # fmt: skip


def _ids(payload: Any, spec: JobSpec | None) -> tuple[int | None, str | None]:
    """The member and job_id of a message, if it has usable ones."""
    if spec is not None:
        return spec.member_id, spec.job_id
    if not isinstance(payload, dict):
        return None, None
    member = payload.get("member_id")
    member = member if isinstance(member, int) and not isinstance(member, bool) else None
    try:
        job_id = _JOB_ID.validate_python(payload.get("job_id"))
    except ValidationError:
        job_id = None
    return member, job_id
