"""The outcome stream on Redis (``credits:events`` by default).

Each event is published at most once per (member, job_id, status): a Lua script checks a
marker key and appends to the stream in one atomic step, so a redelivered message that
re-runs a finished step does not tell the flow engine twice. Consumers should still treat
events as at-least-once across a Redis restart, which wipes both stream and markers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from shared.events import Event, is_outcome_for

MARKER_TTL_S = 7 * 86_400

# The marker is taken first (SET NX: the check and the mark in one command); if the XADD
# then fails, the marker is dropped again, so a later publish (the notify sweep) can still
# deliver the event.
_PUBLISH_ONCE = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
    return false
end
local ok, id = pcall(redis.call, 'XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
if not ok then
    redis.call('DEL', KEYS[1])
    return redis.error_reply(tostring(id))
end
return id
"""


class EventStream:
    def __init__(
        self, redis: Any, stream: str, *, maxlen: int = 1_000_000, prefix: str = ""
    ) -> None:
        self.redis = redis
        self.stream = stream
        self.maxlen = maxlen
        self.marker_prefix = f"{prefix or stream + ':'}sent:"
        self._script = redis.register_script(_PUBLISH_ONCE)

    def publish(self, event: Event) -> str | None:
        """Append ``event`` unless this (job_id, status) was already published; return its id."""
        args: list[Any] = [MARKER_TTL_S, self.maxlen]
        for key, value in event.fields().items():
            args.extend((key, value))
        marker = f"{self.marker_prefix}{event.member_id}:{event.job_id}:{event.status}"
        result = self._script(keys=[marker, self.stream], args=args)
        return result.decode() if isinstance(result, bytes) else result

    def last_id(self) -> str:
        newest = self.redis.xrevrange(self.stream, count=1)
        return newest[0][0].decode() if newest else "0-0"

    def read(self, after: str = "0-0", *, count: int = 1000, block_ms: int | None = None):
        """Events after stream id ``after``, as (id, dict) pairs."""
        found = self.redis.xread({self.stream: after}, count=count, block=block_ms)
        for _name, entries in found or []:
            for entry_id, fields in entries:
                yield entry_id.decode(), {k.decode(): v.decode() for k, v in fields.items()}

    def all(self) -> Iterator[dict[str, str]]:
        after = "0-0"
        while True:
            page = list(self.read(after, count=5000))
            if not page:
                return
            yield from (fields for _id, fields in page)
            after = page[-1][0]

    def wait_for(
        self, member_id: int, job_id: str, after: str, timeout_s: float
    ) -> dict[str, str] | None:
        """Block until an outcome for this member's job arrives: final, or parked. Another
        member's job with the same job_id is another job, and never matches."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            for entry_id, fields in self.read(after, block_ms=max(1, int(min(left, 1.0) * 1000))):
                after = entry_id
                if is_outcome_for(fields, member_id, job_id):
                    return fields
        return None
