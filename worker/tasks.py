"""Thin Celery tasks: parse ids, call the pipeline, turn ``RetryLater`` into a retry."""

from __future__ import annotations

import logging
import random

from celery import Celery, Task
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import InterfaceError, OperationalError

from shared.client import SEND_ACTION_TASK
from worker.pipeline import RetryLater, SendPipeline
from worker.resources import resources_for

log = logging.getLogger("credits.tasks")

# Every redelivery path is bounded. Beyond this, the job row stays where it is and the
# recovery sweeps (resolve, resume, re-publish) take over.
MAX_TASK_RETRIES = 200
INFRA_BACKOFF_MAX_S = 60.0
# Lost connections only: a DataError or IntegrityError is a bug to surface, not to retry.
INFRA_ERRORS = (OperationalError, InterfaceError, RedisConnectionError, RedisTimeoutError)


def register(app: Celery) -> None:
    @app.task(bind=True, name=SEND_ACTION_TASK, max_retries=MAX_TASK_RETRIES)
    def send_action(self: Task, job: object = None) -> dict:
        """Reserve credits, hand the job to fulfilment, then capture or refund."""
        pipeline = SendPipeline(resources_for(self.app.credits_settings))
        try:
            return pipeline.process(job, message_id=self.request.id)
        except RetryLater as exc:
            raise self.retry(countdown=exc.countdown_s, exc=exc) from None
        except INFRA_ERRORS as exc:
            # PostgreSQL or Redis went away mid-step: every step is idempotent, so run the
            # whole message again once they are back.
            ceiling = min(INFRA_BACKOFF_MAX_S, 2.0 ** min(self.request.retries, 6))
            countdown = random.uniform(ceiling / 2, ceiling)
            log.warning("infrastructure error, retrying in %.1fs: %s", countdown, exc)
            raise self.retry(countdown=countdown, exc=exc) from None
