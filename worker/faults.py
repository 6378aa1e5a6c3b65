"""Fault injection for the crash tests: die hard (``os._exit``) at a named pipeline step.

Off unless two settings agree (see ``Settings.fault_crash_at`` and ``fault_armed``).
The countdown is shared through Redis, so "every Nth job" holds across all processes.
"""

from __future__ import annotations

import logging
import os

from worker.resources import Resources

log = logging.getLogger("credits.faults")

CRASH_EXIT_CODE = 137


def maybe_crash(res: Resources, point: str) -> None:
    s = res.settings
    if s.fault_crash_at != point:
        return
    count = res.redis.incr(f"{s.key_prefix}fault:{point}")
    if count % s.fault_crash_every == 0:
        log.critical("fault injection: crashing at %s (hit %d)", point, count)
        logging.shutdown()
        os._exit(CRASH_EXIT_CODE)
