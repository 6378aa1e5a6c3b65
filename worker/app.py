"""The Celery app, configured from ``shared.config.Settings``.

``create_app`` builds an app for any settings (tests make their own); ``app`` is the one
that ``celery -A worker worker`` runs.
"""

from __future__ import annotations

from celery import Celery

from shared.client import FLOW_QUEUE, QUEUES
from shared.config import Settings, get_settings

# The memory transport sleeps a full second between empty polls by default.
MEMORY_POLLING_INTERVAL_S = 0.005


def create_app(settings: Settings | None = None) -> Celery:
    from worker.tasks import beat_schedule

    settings = settings or get_settings()
    app = Celery("worker", set_as_current=False)
    transport_options = {
        # An unacked message is handed to another worker after this long, even while it
        # is still running or waiting out a retry countdown. It must exceed the longest
        # countdown (retry_backoff_max_s) plus the task time limit plus the job lock, or a
        # retried job runs twice at once (kombu#337, celery#4400); Settings checks that.
        "visibility_timeout": settings.visibility_timeout_s,
        # Consume queues in the order listed, not round-robin: instant actions first.
        "queue_order_strategy": "priority",
    }
    if settings.broker.startswith("memory://"):
        transport_options["polling_interval"] = MEMORY_POLLING_INTERVAL_S
    app.conf.update(
        broker_url=settings.broker,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport_options,
        visibility_timeout=settings.visibility_timeout_s,
        result_backend=None,
        task_ignore_result=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        # Ack only after the task returns, and requeue if the child process dies: a crash
        # re-runs the message, and every pipeline step is idempotent.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        task_time_limit=settings.task_time_limit_s,
        task_soft_time_limit=settings.task_time_limit_s * 0.8,
        task_queues=QUEUES,
        task_default_queue=FLOW_QUEUE,
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_consumer="worker.consumer:DeadLetteringConsumer",
        worker_hijack_root_logger=False,
        # One scheduler at a time: celery-redbeat holds a Redis lock; a second beat waits
        # for it, and takes over within beat_lock_timeout_s if the first one dies.
        beat_scheduler="redbeat.RedBeatScheduler",
        redbeat_redis_url=settings.redis_url,
        redbeat_key_prefix=f"{settings.key_prefix}redbeat",
        redbeat_lock_key=f"{settings.key_prefix}redbeat:lock",
        redbeat_lock_timeout=settings.beat_lock_timeout_s,
        beat_max_loop_interval=min(5.0, settings.beat_lock_timeout_s / 3),
        beat_schedule=beat_schedule(settings),
    )
    app.credits_settings = settings
    from worker.tasks import register

    register(app)
    return app
