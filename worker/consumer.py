"""A Celery consumer that keeps the messages it cannot run, instead of dropping them.

Celery logs and acks an undecodable body, and rejects an unknown task or an invalid
message; its log lines dump the message body (addresses, messages) and its own handlers
can raise on a malformed message (``dump_body`` of a message without a body). Here each
such message is written to ``dead_letters`` with its raw bytes, queue and reason, logged
in one line without its body, and acked or rejected so it never loops. The worker keeps
running and nobody is charged.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals
from celery.worker.consumer import Consumer

from shared.services.dead_letters import record_dead_letter
from worker.resources import resources_for

log = logging.getLogger("credits.consumer")


class DeadLetteringConsumer(Consumer):
    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        handle = super().create_task_handler(*args, **kwargs)

        def guarded(message: Any) -> Any:
            # Celery's own handling of a message can raise on a malformed one (a task
            # envelope whose body is null, say): that must not reach the event loop.
            try:
                return handle(message)
            except self.connection_errors:
                raise
            except Exception as exc:
                if message.acknowledged:
                    raise
                self._keep(message, f"malformed task message ({type(exc).__name__}: {exc})")
                self._reject(message, exc)
                return None

        return guarded

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        self._keep(message, f"undecodable message body: {exc}")
        message.ack()

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._keep(message, "message is not a Celery task message")
        self._reject(message, None)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._keep(message, f"unknown task: {exc}")
        self._reject(message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._keep(message, f"invalid task message: {exc}")
        self._reject(message, exc)

    def _reject(self, message: Any, exc: Exception | None) -> None:
        message.reject_log_error(log, self.connection_errors)
        signals.task_rejected.send(sender=self, message=message, exc=exc)

    def _keep(self, message: Any, reason: str) -> None:
        headers = getattr(message, "headers", None) or {}
        queue = (getattr(message, "delivery_info", None) or {}).get("routing_key")
        log.warning("dead letter from %s (message %s): %s", queue, headers.get("id"), reason)
        try:
            record_dead_letter(
                resources_for(self.app.credits_settings).db,
                reason,
                body=message.body,
                task_name=headers.get("task"),
                message_id=headers.get("id"),
                queue=queue,
            )
        except Exception:  # never let bookkeeping of a bad message stop the consumer
            log.exception("could not record dead letter: %s", reason)
