"""The producer client for flow engines: validate a job, sign it, publish it, return.

This is the one module of ``shared`` that imports Celery, and only to publish: it never
imports ``worker``. Instant actions go to a queue that workers drain first.

    from shared.client import CreditsClient

    client = CreditsClient()                # CREDITS_BROKER_URL, CREDITS_JOB_SIGNING_KEY
    client.send_action({"job_id": "flow-7:step-3:lead-42", "member_id": 12,
                        "action": "postcard", "message": "Hi!", "recipient": {...}})

``send_action`` returns once the broker has the job (with RabbitMQ: once it confirmed the
persistent message), or raises BrokerUnavailable after retrying a broker outage for
``CREDITS_PUBLISH_TIMEOUT_S``. Either way the job_id is the idempotency key: sending the
same job again charges once.
"""

from __future__ import annotations

import contextlib
import itertools
import time
import uuid
from typing import Any

from amqp.exceptions import AMQPError
from celery import Celery
from kombu.exceptions import KombuError, OperationalError
from redis import RedisError

from shared.adapters import intake
from shared.adapters.events import EventStream
from shared.adapters.redis_client import make_redis
from shared.config import Settings, get_settings, pops_messages
from shared.errors import BrokerUnavailable, ConfigurationError, InvalidRequest
from shared.pricing import catalog_from_settings, quote
from shared.queues import (
    AMQP_SOCKET_TIMEOUT_S,
    FLOW_QUEUE,
    INSTANT_QUEUE,
    MAINTENANCE_QUEUE,
    PUBLISH_CONNECT_TIMEOUT_S,
    celery_broker_settings,
)
from shared.schemas import Job, job_dict, parse_job, price_fields
from shared.signing import sign

SEND_ACTION_TASK = "credits.send_action"
PUBLISH_BACKOFF_S = (0.1, 0.25, 0.5, 1.0)
# publish_job's loop is the only retry, so that publish_timeout_s bounds send_action: kombu
# would otherwise retry each connect for broker_connection_timeout on its own (max_retries
# unset), and a Redis broker that accepts the connection but never answers (a stopped
# process, a hung proxy) would hold a publish for ever (kombu sets no socket timeout).
PRODUCER_TRANSPORT_OPTIONS = {
    "max_retries": 0,
    "socket_timeout": AMQP_SOCKET_TIMEOUT_S,
    "socket_connect_timeout": PUBLISH_CONNECT_TIMEOUT_S,
}
# What a broker that is down, restarting or refusing raises out of send_task.
BROKER_ERRORS = (OperationalError, KombuError, OSError, AMQPError)
NO_SIGNING_KEY = (
    "CREDITS_JOB_SIGNING_KEY is not set: producers sign every job and workers refuse "
    "unsigned ones; set it to '<key id>:<secret>' (the same value the workers have)"
)


class CreditsClient:
    def __init__(
        self,
        broker_url: str | None = None,
        *,
        redis_url: str | None = None,
        settings: Settings | None = None,
    ):
        self.settings = settings or get_settings()
        self.key = self.settings.signing_key()
        if self.key is None:
            raise ConfigurationError(NO_SIGNING_KEY)
        self.broker_url = broker_url or self.settings.broker
        # Outcomes are read from the Redis the workers write to: the broker's, when only a
        # Redis broker URL is given, as in CreditsClient("redis://...").
        if redis_url is None and broker_url and broker_url.startswith(("redis://", "rediss://")):
            redis_url = broker_url
        self.redis_url = redis_url or self.settings.redis_url
        self._app = Celery("credits-producer", set_as_current=False)
        broker = celery_broker_settings(self.settings, broker_url=self.broker_url)
        broker["broker_transport_options"] = {
            **broker["broker_transport_options"],
            **PRODUCER_TRANSPORT_OPTIONS,
        }
        self._app.conf.update(**broker, task_serializer="json", accept_content=["json"])
        self._events: EventStream | None = None
        self._intake: Any = None

    def send_action(self, job: Job | dict[str, Any]) -> str:
        """Validate, sign and publish ``job``; returns its job_id once the broker has it.

        Raises InvalidRequest naming each bad field (nothing is published then), and
        BrokerUnavailable when the broker did not take it in time (sending it again later
        with the same job_id is safe).

        With a Redis broker the job is first recorded in the intake outbox
        (:mod:`shared.adapters.intake`, kombu#305), in the Redis of ``redis_url``: the
        workers' ``CREDITS_REDIS_URL``.
        """
        spec = parse_job(job)
        payload = job_dict(spec)
        deadline = time.monotonic() + self.settings.publish_timeout_s
        auth = sign(payload, self.key)
        outbox = pops_messages(self.broker_url)
        if outbox:
            self._record_intake(payload, auth, deadline)
        try:
            publish_job(self._app, self.settings, payload, self.key, auth=auth,
                        deadline=deadline)  # fmt: skip
        except BrokerUnavailable:
            if outbox:  # "not sent" stays true: the sweep must not send it later
                self._forget_intake(payload, auth)
            raise
        return spec.job_id

    def republish(self, payload: dict[str, Any], *, auth: dict[str, str] | None = None) -> None:
        """Re-send a job for the sweeps, with no intake entry: a job the workers recorded
        in PostgreSQL (signed with this client's key), or an intake entry's message
        (``auth``: its producer's signature, never re-signed)."""
        publish_job(self._app, self.settings, payload, self.key, auth=auth)

    def _record_intake(self, job: dict[str, Any], auth: dict[str, str], deadline: float) -> None:
        """The intake entry, tried like a publish until ``deadline``: a Redis broker is
        usually this same Redis, so one that does not answer would not take the job."""
        if self._intake is None:
            self._intake = make_redis(
                self.redis_url,
                timeout_s=AMQP_SOCKET_TIMEOUT_S,
                connect_timeout_s=PUBLISH_CONNECT_TIMEOUT_S,
                retry_on_timeout=False,
            )
        s = self.settings
        for attempt in itertools.count():
            try:
                intake.record(self._intake, s.key_prefix, job, auth)
                return
            except RedisError as exc:
                if not _wait_to_retry(deadline, attempt):
                    raise BrokerUnavailable(
                        f"Redis did not take the intake entry of job "
                        f"{job.get('job_id')!r} within {s.publish_timeout_s:g}s "
                        f"({type(exc).__name__}); it was not sent: send it again with the "
                        "same job_id"
                    ) from None

    @property
    def events(self) -> EventStream:
        """The outcome stream: ``read(after)``, ``wait_for(member_id, job_id, after, s)``."""
        if self._events is None:
            self._events = EventStream(
                make_redis(self.redis_url),
                self.settings.stream,
                maxlen=self.settings.events_stream_maxlen,
            )
        return self._events

    def _forget_intake(self, job: dict[str, Any], auth: dict[str, str]) -> None:
        # Redis away too: at worst the intake sweep sends the job later, once.
        with contextlib.suppress(RedisError):
            intake.forget(self._intake, self.settings.key_prefix, job, auth)

    def close(self) -> None:
        self._app.close()
        if self._intake is not None:
            self._intake.close()


def redacted(payload: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """What monitoring (Flower, task events, logs) may show of a job: no address, no text."""
    shown = {k: payload.get(k) for k in ("job_id", "member_id", "action", "source")}
    try:
        shown["cost"] = quote(
            payload["action"], catalog=catalog_from_settings(settings),
            **price_fields(parse_job(payload)),
        ).credits  # fmt: skip
    except (InvalidRequest, KeyError):
        shown["cost"] = None
    return shown


def _wait_to_retry(deadline: float, attempt: int) -> bool:
    """Sleep before another attempt, or False if ``deadline`` has passed."""
    left_s = deadline - time.monotonic()
    if left_s <= 0:
        return False
    time.sleep(min(left_s, PUBLISH_BACKOFF_S[min(attempt, len(PUBLISH_BACKOFF_S) - 1)]))
    return True


def publish_job(
    app: Celery,
    settings: Settings,
    payload: dict[str, Any],
    key: tuple[str, str],
    *,
    auth: dict[str, str] | None = None,
    deadline: float | None = None,
) -> None:
    """Sign an already validated job (or send it with ``auth``, its producer's signature)
    and publish it by task name; sweeps re-send this way.

    A broker that refuses or drops the connection is tried again until ``deadline``
    (default: ``publish_timeout_s`` from now), with one task id, so the job is published
    once or, if an attempt's confirm was lost, twice (the worker runs it once either way).
    """
    queue = INSTANT_QUEUE if payload.get("source") == "instant" else FLOW_QUEUE
    if deadline is None:
        deadline = time.monotonic() + settings.publish_timeout_s
    if auth is None:
        auth = sign(payload, key)
    task_id = str(uuid.uuid4())
    for attempt in itertools.count():
        try:
            app.send_task(
                SEND_ACTION_TASK,
                kwargs={"job": payload, "auth": auth},
                queue=queue,
                task_id=task_id,
                kwargsrepr=repr({"job": redacted(payload, settings)}),
                retry=False,  # our own loop: kombu's retry has no total deadline
            )
            return
        except BROKER_ERRORS as exc:
            if not _wait_to_retry(deadline, attempt):
                raise BrokerUnavailable(
                    f"the broker did not take job {payload.get('job_id')!r} within "
                    f"{settings.publish_timeout_s:g}s ({type(exc).__name__}); it was not "
                    "sent: send it again with the same job_id"
                ) from None


RESUME_MEMBER_TASK = "credits.resume_member"


def request_resume(settings: Settings, member_id: int) -> bool:
    """Ask the workers to resume a member's parked jobs now (credits just arrived).

    Best effort: the resume sweep finds the same jobs within ``CREDITS_RESUME_EVERY_S``
    anyway, so a broker that does not answer at once only delays them. No signature is
    needed: the task only re-sends jobs the workers recorded and signs them itself.
    """
    app = Celery("credits-producer", set_as_current=False)
    app.conf.update(**celery_broker_settings(settings), task_serializer="json")
    try:
        app.send_task(RESUME_MEMBER_TASK, args=(member_id,), queue=MAINTENANCE_QUEUE,
                      retry=True, retry_policy={"max_retries": 1})  # fmt: skip
    except BROKER_ERRORS:
        return False
    finally:
        app.close()
    return True


def send_action(job: Job | dict[str, Any], *, broker_url: str | None = None) -> str:
    """One-shot helper: publish one job with a client built from the environment."""
    client = CreditsClient(broker_url)
    try:
        return client.send_action(job)
    finally:
        client.close()
