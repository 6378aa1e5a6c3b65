"""Thin Celery tasks: parse ids, call the pipeline, turn ``RetryLater`` into a retry."""

from __future__ import annotations

import logging
import random

from celery import Celery, Task
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import InterfaceError, OperationalError

from shared.client import MAINTENANCE_QUEUE, SEND_ACTION_TASK, publish_job
from worker import metrics, sweeps
from worker.pipeline import RetryLater, SendPipeline
from worker.resources import resources_for

log = logging.getLogger("credits.tasks")

# Every redelivery path is bounded. Beyond this, the job row stays where it is and the
# recovery sweeps (resolve, resume, re-publish) take over.
MAX_TASK_RETRIES = 200
LOCK_WAIT_FACTOR = 5
INFRA_BACKOFF_MAX_S = 60.0
UNEXPECTED_RETRIES = 5
# Lost connections only: a DataError or IntegrityError is a bug to surface, not to retry.
INFRA_ERRORS = (OperationalError, InterfaceError, RedisConnectionError, RedisTimeoutError)


def register(app: Celery) -> None:
    register_sweeps(app)

    @app.task(bind=True, name=SEND_ACTION_TASK, max_retries=MAX_TASK_RETRIES, shared=False)
    def send_action(self: Task, job: object = None) -> dict:
        """Reserve credits, hand the job to fulfilment, then capture or refund."""
        pipeline = SendPipeline(resources_for(self.app.credits_settings))
        try:
            return pipeline.process(job, message_id=self.request.id)
        except RetryLater as exc:
            # Waiting for a lock is not the job's fault: it gets a larger budget than
            # vendor and infrastructure retries, but still a bounded one.
            budget = MAX_TASK_RETRIES if exc.counts else MAX_TASK_RETRIES * LOCK_WAIT_FACTOR
            raise self.retry(countdown=exc.countdown_s, exc=exc, max_retries=budget) from None
        except INFRA_ERRORS as exc:
            # PostgreSQL or Redis went away mid-step: every step is idempotent, so run the
            # whole message again once they are back.
            countdown = _backoff(self.request.retries)
            log.warning("infrastructure error, retrying in %.1fs: %s", countdown, exc)
            raise self.retry(countdown=countdown, exc=exc) from None
        except Exception as exc:
            # A bug or an unforeseen failure. Celery would ack the message and forget it;
            # instead try a few more times (steps are idempotent), then keep the message
            # as a dead letter with its reason. The job row, if any, is left to the sweeps.
            if self.request.retries < UNEXPECTED_RETRIES:
                log.exception("unexpected error, retrying: %s", exc)
                raise self.retry(countdown=_backoff(self.request.retries), exc=exc) from None
            log.exception("unexpected error, giving up and dead-lettering: %s", exc)
            return pipeline.dead_letter_unexpected(job, exc, message_id=self.request.id)


def _backoff(retries: int) -> float:
    ceiling = min(INFRA_BACKOFF_MAX_S, 2.0 ** min(retries, 6))
    return random.uniform(ceiling / 2, ceiling)


SWEEPS = {
    # task name: (sweep, the setting that holds its interval)
    "credits.resolve_in_doubt": (sweeps.resolve_in_doubt, "resolve_every_s"),
    "credits.resume_awaiting": (sweeps.resume_awaiting, "resume_every_s"),
    "credits.republish_stale": (sweeps.republish_stale, "republish_every_s"),
    "credits.notify_outcomes": (sweeps.notify_outcomes, "resolve_every_s"),
    "credits.reconcile": (sweeps.reconcile_and_report, "reconcile_every_s"),
}


def register_sweeps(app: Celery) -> None:
    for name, (fn, _interval) in SWEEPS.items():
        _register_sweep(app, name, fn)


def _register_sweep(app: Celery, name: str, fn) -> None:
    @app.task(name=name, bind=True, ignore_result=True, shared=False)
    def sweep(self: Task) -> dict:
        res = resources_for(self.app.credits_settings)
        # Counted in Redis so ops (and the two-beats test) can see how often each fired.
        res.redis.incr(f"{res.settings.key_prefix}sweep_runs:{name}")
        metrics.sweep_ran(name)
        report = fn(res, lambda payload, source: publish_job(self.app, payload, source))
        log.info("sweep %s: %s", name, report.counts)
        return report.as_dict()

    sweep.__doc__ = fn.__doc__


def beat_schedule(settings) -> dict:
    """Each sweep at its interval; a run that waited longer than its interval is dropped."""
    schedule = {}
    for name, (_fn, interval_setting) in SWEEPS.items():
        every_s = getattr(settings, interval_setting)
        schedule[name] = {
            "task": name,
            "schedule": every_s,
            "options": {"queue": MAINTENANCE_QUEUE, "expires": every_s * 0.9},
        }
    return schedule
