"""The intake outbox, for a Redis broker only: a record of each job from ``send_action()``
until a worker starts its task.

kombu's Redis transport pops a message (``BRPOP``) and only then records it in its
``unacked`` hash (https://github.com/celery/kombu/issues/305): a worker that dies between
the two loses the message, and nothing in PostgreSQL says the job ever existed. So the
producer adds, before it publishes, the signed message itself to a sorted set:

    ZADD <prefix>intake <now> <the message: {"auth": ..., "job": ...} as canonical JSON>

the worker removes it (``ZREM`` of the same bytes, rebuilt from the message it got) when
the task starts, and the intake sweep re-publishes the message of any entry older than
``CREDITS_INTAKE_AFTER_S`` whose job has no row in PostgreSQL. One command on each side:
the set holds only jobs whose task has not started, and needs no expiry.
"""

from __future__ import annotations

import time
from typing import Any

from shared.signing import canonical

INTAKE = "intake"


def index_key(prefix: str) -> str:
    return f"{prefix}{INTAKE}"


def entry(job: Any, auth: Any) -> str:
    """The set's member for a message: canonical JSON, as the signature covers the job, so
    the producer's bytes and the worker's (after the broker's JSON round trip) are equal."""
    return canonical({"auth": auth, "job": job}).decode()


def record(redis: Any, prefix: str, job: dict[str, Any], auth: dict[str, str]) -> None:
    """The producer's one command, before it publishes."""
    redis.zadd(index_key(prefix), {entry(job, auth): time.time()})


def forget(redis: Any, prefix: str, job: Any, auth: Any) -> None:
    """The task started: kombu has the message in ``unacked`` from here on (1 command)."""
    redis.zrem(index_key(prefix), entry(job, auth))


def ids_of(message: Any) -> tuple[int, str] | None:
    """(member_id, job_id) of a decoded entry, or None if it is not a job message."""
    job = message.get("job") if isinstance(message, dict) else None
    if not isinstance(job, dict):
        return None
    member_id, job_id = job.get("member_id"), job.get("job_id")
    if type(member_id) is not int or not isinstance(job_id, str):
        return None
    return member_id, job_id
