"""Our prefork pool: Celery's, surviving a broker reconnect after terminated children.

With ``worker_cancel_long_running_tasks_on_connection_loss`` the children running acks-late
tasks are terminated when the broker connection drops, and untracked
(``proc._sentinel_poll = None``). On reconnect the pool re-registers every process with the
event loop; for an untracked one ``hub.add_reader(None)`` raises ValueError, which Celery's
``iterate_file_descriptors_safely`` does not catch: "Unrecoverable error", and the worker
exits (celery#9250, open; celery/asynpool.py ``_track_child_process``). A terminated child
is replaced by the pool's maintenance anyway, so it is skipped here.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.concurrency import asynpool, prefork

log = logging.getLogger("credits.pool")


class AsynPool(asynpool.AsynPool):
    def _track_child_process(self, proc: Any, hub: Any) -> None:
        if getattr(proc, "_sentinel_poll", 0) is None:
            return  # untracked: terminated or exited; the pool replaces it
        try:
            super()._track_child_process(proc, hub)
        except ValueError:
            log.warning("skipping a child process whose pipe is gone: %r", proc)


class TaskPool(prefork.TaskPool):
    Pool = AsynPool
