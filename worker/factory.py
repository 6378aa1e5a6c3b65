"""The Celery app, configured from ``shared.config.Settings``.

``create_app`` builds an app for any settings (the demo and tests make their own);
:mod:`worker.celery` holds the one that ``celery -A worker`` runs.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from celery import Celery, signals

from shared.config import Settings, get_settings
from shared.queues import celery_broker_settings

NO_WORKER_KEY = (
    "CREDITS_JOB_SIGNING_KEY is not set: workers verify jobs and sign the ones they "
    "re-send; set it to '<key id>:<secret>', the same value the producers have"
)


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    # Before anything imports prometheus_client (the tasks do): prefork children need
    # multiprocess mode to share their counters with the main process's /metrics.
    from worker import metrics

    metrics.prepare_multiprocess(settings)
    from worker.tasks import register
    from worker.tasks.sweeps import beat_schedule

    app = Celery("worker", set_as_current=False)
    redbeat_url, redbeat_password = _split_password(settings.redis_url)
    broker = celery_broker_settings(settings)
    if settings.broker.startswith(("redis://", "rediss://")):
        # kombu's Redis transport, made safe against raw entries it cannot decode.
        broker["broker_transport"] = "worker.transport:Transport"
        broker["broker_transport_options"]["undeliverable"] = _undeliverable(settings)
    app.conf.update(
        **broker,
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
        # The default pool (no -P): prefork, surviving broker reconnects (worker.pool).
        worker_pool="worker.pool:TaskPool",
        worker_cancel_long_running_tasks_on_connection_loss=True,
        task_time_limit=settings.task_time_limit_s,
        task_soft_time_limit=settings.task_time_limit_s * 0.8,
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_consumer="worker.consumer:DeadLetteringConsumer",
        worker_hijack_root_logger=False,
        # One scheduler at a time: celery-redbeat holds a Redis lock; a second beat waits
        # for it, and takes over within beat_lock_timeout_s if the first one dies.
        beat_scheduler="redbeat.RedBeatScheduler",
        # The password travels in the options, not the URL: `celery inspect conf` and
        # Flower mask option keys named like passwords, but show URLs other than the
        # broker's as they are.
        redbeat_redis_url=redbeat_url,
        redbeat_redis_options={"password": redbeat_password} if redbeat_password else {},
        redbeat_key_prefix=f"{settings.key_prefix}redbeat",
        redbeat_lock_key=f"{settings.key_prefix}redbeat:lock",
        redbeat_lock_timeout=settings.beat_lock_timeout_s,
        beat_max_loop_interval=min(5.0, settings.beat_lock_timeout_s / 3),
        beat_schedule=beat_schedule(settings),
    )
    app.credits_settings = settings
    register(app)
    _connect_signals(app, settings)
    return app


def _undeliverable(settings: Settings):
    """Keep a raw queue entry that cannot even become a message, as a dead letter."""

    def keep(raw: bytes, queue: str, reason: str) -> None:
        from shared.services.dead_letters import record_dead_letter
        from worker.resources import resources_for

        record_dead_letter(resources_for(settings).db, reason, body=raw, queue=queue)

    return keep


def _split_password(url: str) -> tuple[str, str | None]:
    parts = urlsplit(url)
    if parts.password is None:
        return url, None
    host = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}{host}")), parts.password


def _connect_signals(app: Celery, settings: Settings) -> None:
    """Checks, logging and metrics for worker processes of this app (signals are
    process-wide, so each handler first checks that the sender is this app)."""
    from worker import logs, metrics
    from worker.resources import resources_for

    def on_logging(logger: Any = None, loglevel: Any = None, **_: Any) -> None:
        logs.configure(logger, settings.log_format, loglevel)

    def on_worker_init(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app and settings.signing_key() is None:
            # A worker re-sends jobs (the sweeps) and must sign them like any producer.
            # SystemExit, not an error: Celery logs and ignores errors of signal handlers.
            raise SystemExit(f"error: {NO_WORKER_KEY}")

    def on_worker_ready(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app and settings.metrics_port:
            res = resources_for(settings)
            metrics.start_server(settings, res.db, res.redis)

    def on_worker_shutdown(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            metrics.cleanup()

    signals.after_setup_logger.connect(on_logging, weak=False)
    signals.after_setup_task_logger.connect(on_logging, weak=False)
    signals.worker_init.connect(on_worker_init, weak=False)
    signals.worker_ready.connect(on_worker_ready, weak=False)
    signals.worker_shutdown.connect(on_worker_shutdown, weak=False)
