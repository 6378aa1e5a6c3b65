"""The recovery sweeps as periodic tasks, on the maintenance queue, scheduled by beat."""

from __future__ import annotations

from typing import Any

from celery import Celery

from shared.client import RESUME_MEMBER_TASK
from shared.queues import MAINTENANCE_QUEUE
from worker import metrics, recovery
from worker.resources import resources_for
from worker.tasks.base import CreditsTask, Reason

SWEEPS = {
    # task name: (sweep, the setting that holds its interval)
    "credits.resolve_in_doubt": (recovery.resolve_in_doubt, "resolve_every_s"),
    "credits.resume_awaiting": (recovery.resume_awaiting, "resume_every_s"),
    "credits.republish_stale": (recovery.republish_stale, "republish_every_s"),
    "credits.recover_intake": (recovery.recover_intake, "intake_every_s"),
    "credits.notify_outcomes": (recovery.notify_outcomes, "resolve_every_s"),
    "credits.reconcile": (recovery.reconcile_and_report, "reconcile_every_s"),
}


class SweepTask(CreditsTask):
    # Beat runs every sweep again soon: a few retries of a failed run are enough.
    budgets = {Reason.LOCK: 10, Reason.VENDOR: 0, Reason.INFRA: 3, Reason.UNEXPECTED: 1}


def register(app: Celery) -> None:
    for name, (fn, _interval) in SWEEPS.items():
        _register(app, name, fn)

    @app.task(name=RESUME_MEMBER_TASK, base=SweepTask, bind=True, ignore_result=True,
              shared=False)  # fmt: skip
    def resume_member(self: SweepTask, member_id: int) -> dict:
        """Credits just arrived for a member with parked jobs: resume them now."""
        res = resources_for(self.app.credits_settings)
        return recovery.resume_awaiting(res, member_id=member_id).as_dict()


def _register(app: Celery, name: str, fn) -> None:
    @app.task(name=name, base=SweepTask, bind=True, ignore_result=True, shared=False)
    def sweep(self: SweepTask) -> dict[str, Any]:
        res = resources_for(self.app.credits_settings)
        # Counted in Redis so ops (and the two-beats test) can see how often each fired.
        res.redis.incr(f"{res.settings.key_prefix}sweep_runs:{name}")
        metrics.sweep_ran(name)
        report = fn(res)
        if report.counts:
            recovery.log.info("sweep %s: %s", name, report.counts)
        return report.as_dict()

    sweep.__doc__ = fn.__doc__


def beat_schedule(settings) -> dict:
    """Each sweep at its interval; a run that waited longer than its interval is dropped."""
    schedule = {}
    for name, (_fn, interval_setting) in SWEEPS.items():
        if name == "credits.recover_intake" and not settings.intake_outbox:
            continue  # no intake outbox with RabbitMQ (or memory://)
        every_s = getattr(settings, interval_setting)
        schedule[name] = {
            "task": name,
            "schedule": every_s,
            "options": {"queue": MAINTENANCE_QUEUE, "expires": every_s * 0.9},
        }
    return schedule
