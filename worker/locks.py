"""The Redis lock on a member wallet: it orders reservations, so a busy member's jobs take
their holds one after another instead of piling up on the wallet's row lock. It buys
speed and order, not safety: the database's conditional UPDATE holds if the lock expires
under a paused worker (Kleppmann, "How to do distributed locking").

Two deliveries of one job are kept apart by the job's lease in the database instead
(``shared.services.jobs.accept``): it is taken in the same transaction that records the
attempt, so it costs nothing extra.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from redis.exceptions import LockError

log = logging.getLogger(__name__)
LOCK_POLL_S = 0.005


class Locks:
    def __init__(self, redis: Any, settings: Any) -> None:
        self.redis = redis
        self.prefix = f"{settings.key_prefix}lock:"
        self.member_timeout_s = settings.lock_timeout_s
        self.member_wait_s = settings.lock_blocking_timeout_s
        self.wait_observer = None  # called with (lock kind, seconds waited)

    @contextmanager
    def member(self, member_id: int) -> Iterator[bool]:
        """Serialise reservations on one wallet; yields False if not acquired in time."""
        with self._hold("member", member_id, self.member_timeout_s, self.member_wait_s) as ok:
            yield ok

    @contextmanager
    def _hold(
        self, kind: str, key: object, timeout_s: float, wait_s: float | None
    ) -> Iterator[bool]:
        name = f"{kind}:{key}"
        lock = self.redis.lock(
            self.prefix + name,
            timeout=timeout_s,
            # A waiter polls: often enough that a busy member's reservations (a few ms
            # each) follow one another closely, rarely enough not to load Redis.
            sleep=LOCK_POLL_S,
            blocking=wait_s is not None,
            blocking_timeout=wait_s,
            thread_local=False,
        )
        started = time.monotonic()
        acquired = lock.acquire()
        if self.wait_observer is not None:
            self.wait_observer(kind, time.monotonic() - started)
        try:
            yield acquired
        finally:
            if acquired:
                try:
                    lock.release()
                except LockError:
                    # It expired while we worked; the database guards kept us safe.
                    log.warning("lock %s expired before release", name)
