"""Queues and broker settings, shared by producers and workers so both see one topology.

Three queues: ``credits.maintenance`` (sweeps), ``credits.instant`` (a person is waiting)
and ``credits.flow`` (automated flows). Each has an exchange and a routing key of its own:
left to Celery's defaults, all would bind to the default queue's exchange under one routing
key, and a message sent there would land in every queue.

Priority, by broker:
- Redis: every worker drains the queues in that order (``queue_order_strategy``).
- RabbitMQ: a consumer of several queues takes from each in turn, and quorum queues have
  no message priorities before RabbitMQ 4.0; so instant work gets workers of its own
  (``-Q credits.maintenance,credits.instant``), which the compose stack runs, beside
  workers that take all three.

RabbitMQ: durable queues (quorum queues with ``CREDITS_QUORUM_QUEUES``, for a cluster),
persistent messages, publisher confirms; topic exchanges, because Celery's native delayed
delivery -- how a countdown retry waits on quorum queues without a worker holding it --
routes through them.
"""

from __future__ import annotations

from typing import Any

from kombu import Exchange, Queue

from shared.config import BROKER_HEARTBEAT_S, Settings

MAINTENANCE_QUEUE = "credits.maintenance"
INSTANT_QUEUE = "credits.instant"
FLOW_QUEUE = "credits.flow"
QUEUE_NAMES = (MAINTENANCE_QUEUE, INSTANT_QUEUE, FLOW_QUEUE)
# The memory transport sleeps a full second between empty polls by default.
MEMORY_POLLING_INTERVAL_S = 0.005
PUBLISH_CONNECT_TIMEOUT_S = 4.0
AMQP_SOCKET_TIMEOUT_S = 5.0


def queues(settings: Settings) -> tuple[Queue, ...]:
    arguments = {"x-queue-type": "quorum"} if settings.quorum_queues else None
    kind = "topic" if settings.broker_is_amqp else "direct"
    return tuple(
        Queue(
            name,
            Exchange(name, type=kind, durable=True),
            routing_key=name,
            durable=True,
            queue_arguments=arguments,
        )
        for name in QUEUE_NAMES
    )


def transport_options(settings: Settings) -> dict[str, Any]:
    if settings.broker_is_amqp:
        # Publisher confirms: send_task returns once RabbitMQ has the (persistent) message.
        # Socket timeouts bound a publish to a broker that accepts the connection but hangs
        # (pyamqp ignores a "confirm_timeout" transport option).
        return {"confirm_publish": True, "read_timeout": AMQP_SOCKET_TIMEOUT_S,
                "write_timeout": AMQP_SOCKET_TIMEOUT_S}  # fmt: skip
    options: dict[str, Any] = {
        # An unacked message is handed to another worker after this long, even while it
        # is still running or waiting out a retry countdown. It must exceed the longest
        # countdown plus the task time limit plus the job lock, or a retried job runs
        # twice at once (kombu#337, celery#4400); Settings checks that.
        "visibility_timeout": settings.visibility_timeout_s,
        # A worker killed outright leaves its messages unacked; live workers scan for
        # ones older than the visibility timeout every restore_interval_s and re-queue
        # them (kombu's default scans only every 10th interval: 100 s).
        "unacked_restore_interval": settings.restore_interval_s,
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": 60,
        # Consume queues in the order listed, not round-robin: sweeps, instant, then flow.
        "queue_order_strategy": "priority",
        # Every key of the broker's (queues, unacked, bindings) carries the deployment's
        # prefix, so two deployments on one Redis DB never run each other's messages.
        "global_keyprefix": settings.key_prefix,
    }
    if settings.broker.startswith("memory://"):
        options = {"polling_interval": MEMORY_POLLING_INTERVAL_S,
                   "queue_order_strategy": "priority"}  # fmt: skip
    return options


def celery_broker_settings(settings: Settings, *, broker_url: str | None = None) -> dict:
    """The Celery settings that shape the broker side, for producers and workers alike."""
    conf = {
        "broker_url": broker_url or settings.broker,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": PUBLISH_CONNECT_TIMEOUT_S,
        "broker_transport_options": transport_options(settings),
        "task_queues": queues(settings),
        "task_default_queue": FLOW_QUEUE,
        "task_default_delivery_mode": "persistent",
        "task_create_missing_queues": False,
    }
    if settings.broker_is_amqp:
        conf["broker_heartbeat"] = BROKER_HEARTBEAT_S
        # A channel closed by the broker (consumer_timeout on a long-held delivery) is a
        # reconnect and a redelivery, not a worker exit.
        conf["broker_channel_error_retry"] = True
    return conf


def original_queue(delivery_info: dict[str, Any] | None) -> str | None:
    """The queue a message came from (routing key == queue name), without the bit prefix
    that RabbitMQ's native delayed delivery puts on a countdown's routing key."""
    from kombu.transport.native_delayed_delivery import _delay_prefix_re

    routing_key = (delivery_info or {}).get("routing_key")
    return _delay_prefix_re.sub("", routing_key, count=1) if routing_key else None
