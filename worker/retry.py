"""Why a task asks to run again, and how long it waits: the vocabulary the pipeline raises
and :class:`worker.tasks.base.CreditsTask` turns into retries, each with its own budget."""

from __future__ import annotations

import random


class LockBusy(Exception):
    """Another delivery of this job, or a reservation for this member, is running."""


class RetryLater(Exception):
    """The vendor failed transiently: run this message again after ``countdown_s``."""

    def __init__(self, reason: str, countdown_s: float) -> None:
        super().__init__(reason)
        self.countdown_s = countdown_s


def backoff_s(attempt: int, base_s: float, cap_s: float) -> float:
    """Exponential backoff with equal jitter: half fixed, half random, capped."""
    ceiling = min(cap_s, base_s * 2 ** min(attempt, 30))
    return random.uniform(ceiling / 2, ceiling)
