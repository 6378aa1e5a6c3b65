"""The task base class: it owns the retry policy, and the logging and metrics around tasks,
so each task body stays a few lines (warehouse's ``WarehouseTask``).

A task body raises; the base class decides, with a separate budget for each reason:

    LockBusy              another delivery or reservation is running: come back soon
    RetryLater            the vendor failed transiently (the job row counts those)
    infrastructure error  PostgreSQL or Redis went away: back off, run it again
    SoftTimeLimitExceeded the task ran too long: expected, logged, left to the resolver
    anything else         a bug: a few tries, then the task's ``give_up`` (a dead letter)

The budgets travel in the message (``retries`` in its kwargs), so a message that waited
on a lock a hundred times still has its full budget for an unexpected error.

A retry is a new message published before the old one is acked. Celery's own
``Task.retry`` drops the old message (``Reject(requeue=False)``) when that publish fails;
here it is requeued instead, or left unacked for the broker to redeliver, so a broker
outage at the moment of a retry loses nothing.
"""

from __future__ import annotations

import enum
import logging
import math
import random
import time
from typing import Any

from celery import Task
from celery.exceptions import Reject, Retry, SoftTimeLimitExceeded
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import InterfaceError, OperationalError

from shared.errors import ServiceUnavailable
from shared.queues import original_queue
from worker import metrics
from worker.retry import LockBusy, RetryLater, backoff_s

log = logging.getLogger("credits.tasks")

# Lost connections only: a DataError or IntegrityError is a bug to surface, not to retry.
INFRA_ERRORS = (
    OperationalError,
    InterfaceError,
    RedisConnectionError,
    RedisTimeoutError,
    ServiceUnavailable,
)
INFRA_BACKOFF_MAX_S = 60.0
LOCK_BUSY_COUNTDOWN_S = (0.05, 0.5)
REQUEUE_PAUSE_S = (0.5, 2.0)
# How hard a retry's own publish tries before the original message is requeued instead.
RETRY_PUBLISH_POLICY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5,
                        "interval_max": 1.0}  # fmt: skip


class Reason(enum.StrEnum):
    LOCK = "lock"
    VENDOR = "vendor"
    INFRA = "infra"
    UNEXPECTED = "unexpected"


class CreditsTask(Task):
    """Base of every task of this app; set ``budgets`` per task for its own limits."""

    abstract = True
    max_retries = None  # the budgets below decide, not Celery's single counter
    budgets: dict[Reason, int] = {
        Reason.LOCK: 1000,
        Reason.VENDOR: 1000,  # the job row's attempts are the real vendor budget
        Reason.INFRA: 50,
        Reason.UNEXPECTED: 5,
    }

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except LockBusy as exc:
            return self._retry(Reason.LOCK, random.uniform(*LOCK_BUSY_COUNTDOWN_S), exc)
        except RetryLater as exc:
            return self._retry(Reason.VENDOR, exc.countdown_s, exc)
        except SoftTimeLimitExceeded:
            # Expected under a slow vendor: whatever step was running is either done or
            # rolled back; a job left submitted is the resolver's once nobody retries it.
            log.warning("task %s[%s] hit its soft time limit; left for the resolver",
                        self.name, self.request.id)  # fmt: skip
            metrics.task_retried(self.name, "soft_time_limit")
            return {"status": "soft_time_limit"}
        except INFRA_ERRORS as exc:
            used = self._used(Reason.INFRA)
            countdown = backoff_s(used, 1.0, INFRA_BACKOFF_MAX_S)
            log.warning("task %s: %s, retrying in %.1fs: %s",
                        self.name, type(exc).__name__, countdown, exc)  # fmt: skip
            return self._retry(Reason.INFRA, countdown, exc)
        except (Retry, Reject):
            raise
        except Exception as exc:
            log.exception("task %s: unexpected %s", self.name, type(exc).__name__)
            countdown = backoff_s(self._used(Reason.UNEXPECTED), 1.0, INFRA_BACKOFF_MAX_S)
            return self._retry(Reason.UNEXPECTED, countdown, exc)

    # ------------------------------------------------------------ hooks for tasks

    def give_up(self, reason: Reason, exc: Exception, kwargs: dict[str, Any]) -> Any:
        """Called when a reason's budget is spent; the message is then acked."""
        log.error("task %s: giving up after %s retries (%s): %s",
                  self.name, reason, type(exc).__name__, exc)  # fmt: skip
        return {"status": "given_up", "reason": str(reason)}

    def kwargs_repr(self, kwargs: dict[str, Any]) -> str:
        """What monitoring may show of a retried message's arguments."""
        return repr(sorted(kwargs))

    # ------------------------------------------------------------ the policy

    def _budgets_used(self) -> dict[str, int]:
        found = (self.request.kwargs or {}).get("retries")
        if not isinstance(found, dict):
            return {}
        return {str(k): v for k, v in found.items() if isinstance(v, int) and v >= 0}

    def _used(self, reason: Reason) -> int:
        return self._budgets_used().get(reason.value, 0)

    def _retry(self, reason: Reason, countdown_s: float, exc: Exception) -> Any:
        used = self._budgets_used()
        kwargs = dict(self.request.kwargs or {})
        if used.get(reason.value, 0) >= self.budgets[reason]:
            metrics.task_retried(self.name, f"{reason}_exhausted")
            return self.give_up(reason, exc, kwargs)
        used[reason.value] = used.get(reason.value, 0) + 1
        kwargs["retries"] = used
        if self.app.credits_settings.quorum_queues:
            # RabbitMQ's native delayed delivery counts whole seconds, and refuses less than 1.
            countdown_s = float(max(1, math.ceil(countdown_s)))
        signature = self.signature_from_request(
            self.request,
            args=(),
            kwargs=kwargs,
            countdown=countdown_s,
            retries=self.request.retries + 1,
            kwargsrepr=self.kwargs_repr(kwargs),
            # The queue it came from, always: with RabbitMQ's native delayed delivery,
            # Celery would otherwise route the retry to the default queue, or nowhere.
            queue=original_queue(self.request.delivery_info),
        )
        try:
            signature.apply_async(retry=True, retry_policy=RETRY_PUBLISH_POLICY)
        except Exception as publish_exc:
            # Keep the message: requeued, to run again. Never Celery's Reject(requeue=False),
            # which drops it. A short pause first, so a broker that keeps refusing does not
            # turn this into a hot loop.
            log.warning("task %s: cannot publish its retry (%s); the message is requeued",
                        self.name, type(publish_exc).__name__)  # fmt: skip
            metrics.task_retried(self.name, "requeued")
            time.sleep(random.uniform(*REQUEUE_PAUSE_S))
            raise Reject(publish_exc, requeue=True) from None
        metrics.task_retried(self.name, reason.value)
        raise Retry(exc=exc, when=countdown_s, sig=signature)
