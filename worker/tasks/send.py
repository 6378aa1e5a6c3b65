"""``credits.send_action``: the send pipeline for one job; and ``credits.noop``, Celery's
own cost on the same app and worker, the ceiling the benchmarks compare against."""

from __future__ import annotations

from typing import Any

from celery import Celery

from shared.client import SEND_ACTION_TASK, redacted
from worker.pipeline import SendPipeline
from worker.resources import resources_for
from worker.tasks.base import CreditsTask, Reason

NOOP_TASK = "credits.noop"


class SendActionTask(CreditsTask):
    def give_up(self, reason: Reason, exc: Exception, kwargs: dict[str, Any]) -> Any:
        # A message that keeps failing for a reason nobody foresaw is kept, with its
        # reason, as a dead letter; a recorded job stays where it is for the sweeps.
        super().give_up(reason, exc, kwargs)
        pipeline = SendPipeline(resources_for(self.app.credits_settings))
        return pipeline.dead_letter_unexpected(kwargs, exc, message_id=self.request.id)

    def kwargs_repr(self, kwargs: dict[str, Any]) -> str:
        job = kwargs.get("job")
        shown = redacted(job, self.app.credits_settings) if isinstance(job, dict) else None
        return repr({"job": shown, "retries": kwargs.get("retries")})


def register(app: Celery) -> None:
    @app.task(bind=True, base=SendActionTask, name=SEND_ACTION_TASK, shared=False)
    def send_action(self: SendActionTask, *args: Any, **kwargs: Any) -> dict:
        """Verify, reserve credits, hand the job to fulfilment, then capture or refund."""
        pipeline = SendPipeline(resources_for(self.app.credits_settings))
        queue = (self.request.delivery_info or {}).get("routing_key")
        return pipeline.process(args, kwargs, message_id=self.request.id, queue=queue)

    @app.task(name=NOOP_TASK, shared=False, ignore_result=True)
    def noop(*_args: Any, **_kwargs: Any) -> None:
        """Does nothing: the cost of a task on this app and worker, for benchmarks."""
