"""Every task of the app, registered on an app by :func:`register`.

Tasks are thin: each parses its message, calls one service or the pipeline, and leaves
retries, logging and metrics to :class:`worker.tasks.base.CreditsTask`.
"""

from __future__ import annotations

from celery import Celery

from worker.tasks import send, sweeps


def register(app: Celery) -> None:
    send.register(app)
    sweeps.register(app)


__all__ = ["register"]
