"""The Celery app, configured from ``shared.config.Settings``.

``create_app`` builds an app for any settings (tests make their own); ``app`` is the one
that ``celery -A worker worker`` runs.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, signals

from shared.client import FLOW_QUEUE, QUEUES
from shared.config import Settings, get_settings

# The memory transport sleeps a full second between empty polls by default.
MEMORY_POLLING_INTERVAL_S = 0.005


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    # Before anything imports prometheus_client (the tasks do): prefork children need
    # multiprocess mode to share their counters with the main process's /metrics.
    from worker import metrics

    metrics.prepare_multiprocess(settings)
    from worker.tasks import beat_schedule

    app = Celery("worker", set_as_current=False)
    transport_options = {
        # An unacked message is handed to another worker after this long, even while it
        # is still running or waiting out a retry countdown. It must exceed the longest
        # countdown (retry_backoff_max_s) plus the task time limit plus the job lock, or a
        # retried job runs twice at once (kombu#337, celery#4400); Settings checks that.
        "visibility_timeout": settings.visibility_timeout_s,
        # A worker killed outright leaves its messages unacked; live workers scan for
        # ones older than the visibility timeout every restore_interval_s and re-queue
        # them (kombu's default scans only every 10th interval: 100 s).
        "unacked_restore_interval": settings.restore_interval_s,
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": 60,
        # Consume queues in the order listed, not round-robin: sweeps, instant, then flow.
        "queue_order_strategy": "priority",
    }
    if settings.broker.startswith("memory://"):
        transport_options["polling_interval"] = MEMORY_POLLING_INTERVAL_S
    app.conf.update(
        broker_url=settings.broker,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport_options,
        visibility_timeout=settings.visibility_timeout_s,
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout_s},
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
    _connect_signals(app, settings)
    return app


def _connect_signals(app: Celery, settings: Settings) -> None:
    """Logging and metrics for worker processes of this app (signals are process-wide)."""
    from worker import logs, metrics
    from worker.resources import resources_for

    def on_logging(logger: Any = None, loglevel: Any = None, **_: Any) -> None:
        logs.configure(logger, settings.log_format, loglevel)

    def on_worker_ready(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app and settings.metrics_port:
            res = resources_for(settings)
            metrics.start_server(settings, res.db, res.redis)

    def on_worker_shutdown(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            metrics.cleanup()

    signals.after_setup_logger.connect(on_logging, weak=False)
    signals.after_setup_task_logger.connect(on_logging, weak=False)
    signals.worker_ready.connect(on_worker_ready, weak=False)
    signals.worker_shutdown.connect(on_worker_shutdown, weak=False)
