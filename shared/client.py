"""The producer client for flow engines: validate a job, publish it by task name, return.

This is the one module of ``shared`` that imports Celery, and only to publish: it never
imports ``worker``. Instant actions go to a queue that workers drain first.

    from shared.client import CreditsClient

    client = CreditsClient("redis://127.0.0.1:6379/0")
    client.send_action({"job_id": "flow-7:step-3:lead-42", "member_id": 12,
                        "action": "postcard", "message": "Hi!", "recipient": {...}})
    after = "0-0"
    for entry_id, event in client.events.read(after, block_ms=5000):
        ...                                 # event["job_id"], event["status"], ...
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from shared.config import Settings, get_settings
from shared.events import EventStream
from shared.redis_client import make_redis
from shared.schemas import Job, job_dict, parse_job

SEND_ACTION_TASK = "credits.send_action"
MAINTENANCE_QUEUE = "credits.maintenance"
INSTANT_QUEUE = "credits.instant"
FLOW_QUEUE = "credits.flow"
# Workers drain queues in this order. Each queue gets an exchange and routing key of its
# own: left to Celery's defaults, all would bind to the default queue's exchange under one
# routing key, and a message sent there would land in every queue.
QUEUE_NAMES = (MAINTENANCE_QUEUE, INSTANT_QUEUE, FLOW_QUEUE)
QUEUES = tuple(Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUE_NAMES)


class CreditsClient:
    def __init__(
        self,
        broker_url: str | None = None,
        *,
        redis_url: str | None = None,
        settings: Settings | None = None,
    ):
        self.settings = settings or get_settings()
        self.broker_url = broker_url or self.settings.broker
        # Outcomes are read from the Redis the workers write to: the broker's, when only a
        # Redis broker URL is given, as in CreditsClient("redis://...").
        if redis_url is None and broker_url and broker_url.startswith(("redis://", "rediss://")):
            redis_url = broker_url
        self.redis_url = redis_url or self.settings.redis_url
        self._app = Celery("credits-producer", broker=self.broker_url, set_as_current=False)
        self._app.conf.update(
            task_serializer="json",
            accept_content=["json"],
            task_queues=QUEUES,
            task_default_queue=FLOW_QUEUE,
            broker_connection_retry_on_startup=True,
            broker_transport_options={"visibility_timeout": self.settings.visibility_timeout_s},
        )
        self._events: EventStream | None = None

    def send_action(self, job: Job | dict[str, Any]) -> str:
        """Validate ``job`` and publish it; returns its job_id at once.

        Raises InvalidRequest naming each bad field; nothing is published then. The
        job_id is the idempotency key: sending the same job again charges once.
        """
        spec = parse_job(job)
        publish_job(self._app, job_dict(spec), spec.source)
        return spec.job_id

    @property
    def events(self) -> EventStream:
        """The outcome stream: ``read(after)``, ``wait_for(job_id, after, timeout_s)``."""
        if self._events is None:
            self._events = EventStream(
                make_redis(self.redis_url),
                self.settings.stream,
                maxlen=self.settings.events_stream_maxlen,
            )
        return self._events

    def close(self) -> None:
        self._app.close()


def publish_job(app: Celery, payload: dict[str, Any], source: str) -> None:
    """Publish an already validated job by task name; the worker's sweeps re-send this way."""
    queue = INSTANT_QUEUE if source == "instant" else FLOW_QUEUE
    app.send_task(SEND_ACTION_TASK, kwargs={"job": payload}, queue=queue)


def send_action(job: Job | dict[str, Any], *, broker_url: str | None = None) -> str:
    """One-shot helper: publish one job with a client built from the environment."""
    client = CreditsClient(broker_url)
    try:
        return client.send_action(job)
    finally:
        client.close()
