"""A Celery consumer that keeps the messages it cannot even parse, instead of dropping them.

Celery logs and acks an undecodable body, and rejects an unknown task or an invalid
message. We do the same -- the worker keeps running and nobody is charged -- but first
write each one to ``dead_letters`` with its reason, so ops can see what was sent.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.consumer import Consumer

from shared.services.dead_letters import record_dead_letter
from worker.resources import resources_for

log = logging.getLogger("credits.consumer")


class DeadLetteringConsumer(Consumer):
    def on_decode_error(self, message: Any, exc: Exception) -> None:
        self._keep(message, f"undecodable message body: {exc}")
        super().on_decode_error(message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._keep(message, "message is not a Celery task message")
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._keep(message, f"unknown task: {exc}")
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._keep(message, f"invalid task message: {exc}")
        super().on_invalid_task(body, message, exc)

    def _keep(self, message: Any, reason: str) -> None:
        try:
            headers = getattr(message, "headers", None) or {}
            delivery = getattr(message, "delivery_info", None) or {}
            record_dead_letter(
                resources_for(self.app.credits_settings).db,
                reason,
                body=message.body,
                task_name=headers.get("task"),
                message_id=headers.get("id"),
                queue=delivery.get("routing_key"),
            )
        except Exception:  # never let bookkeeping of a bad message stop the consumer
            log.exception("could not record dead letter: %s", reason)
