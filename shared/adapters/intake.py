"""The intake outbox, for a Redis broker only: a record of each job from ``send_action()``
until a worker starts its task.

kombu's Redis transport pops a message (``BRPOP``) and only then records it in its
``unacked`` hash (https://github.com/celery/kombu/issues/305): a worker that dies between
the two loses the message, and nothing in PostgreSQL says the job ever existed. So the
producer writes, in one round trip before it publishes,

    SET  <prefix>intake:<member_id>:<job_id>  {"job": ..., "auth": ...}  EX <ttl>
    ZADD <prefix>intake  <now>  <member_id>:<job_id>

the worker deletes the record when the task starts, and the intake sweep re-publishes
the stored message (its producer's signature unchanged) of any record older than
``CREDITS_INTAKE_AFTER_S`` whose job has no row in PostgreSQL.
"""

from __future__ import annotations

import json
import time
from typing import Any

INTAKE = "intake"


def member_key(member_id: Any, job_id: Any) -> str:
    """The sorted set's member for a job: ``<member_id>:<job_id>`` (job ids may hold ':')."""
    return f"{member_id}:{job_id}"


def record_key(prefix: str, member: str) -> str:
    return f"{prefix}{INTAKE}:{member}"


def index_key(prefix: str) -> str:
    return f"{prefix}{INTAKE}"


def split_member(member: str) -> tuple[int, str] | None:
    """(member_id, job_id) of a sorted-set member, or None if it is not one of ours."""
    member_id, sep, job_id = member.partition(":")
    if not sep or not job_id or not member_id.isdigit():
        return None
    return int(member_id), job_id


def record(redis: Any, prefix: str, message: dict[str, Any], *, ttl_s: float) -> None:
    """Write a job's record and index it, in one pipelined round trip (2 commands)."""
    job = message["job"]
    member = member_key(job["member_id"], job["job_id"])
    pipe = redis.pipeline(transaction=False)
    pipe.set(record_key(prefix, member), json.dumps(message, separators=(",", ":")),
             ex=max(1, int(ttl_s)))  # fmt: skip
    pipe.zadd(index_key(prefix), {member: time.time()})
    pipe.execute()


def forget(redis: Any, prefix: str, member_id: Any, job_id: Any) -> None:
    """The task started: kombu has the message in ``unacked`` from here on (1 command)."""
    redis.delete(record_key(prefix, member_key(member_id, job_id)))
