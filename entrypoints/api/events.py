"""``/v1/events``: the caller's own outcome events as Server-Sent Events.

Each event is one job outcome from the Redis stream the workers write
(:mod:`shared.adapters.events`), typed: ``{"job_id", "member_id", "status", "final",
"cost", "available", "held", ...}``. The SSE ``id`` is the stream id, so a client that
reconnects with ``Last-Event-ID`` (browsers do) misses nothing the stream still holds.
A member's token sees that member's events; a support token sees every event.

Limits: at most ``CREDITS_API_MAX_EVENT_STREAMS`` open streams per process (then 503);
a comment line every few seconds keeps proxies from closing a quiet stream; the token is
checked again every minute, so revoking it ends its streams.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from entrypoints.api.auth import Caller, CallerDep, ResourcesDep
from entrypoints.api.problems import responses
from entrypoints.api.state import Resources
from shared.errors import CreditsError, ServiceUnavailable
from shared.events import typed
from shared.services import tokens

router = APIRouter(prefix="/v1", tags=["events"], responses=responses(401, 503))
STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
BLOCK_MS = 5_000  # below the Redis client's socket timeout (10 s)
BATCH = 200
RECHECK_TOKEN_S = 60.0
RETRY_MS = 3_000
StreamId = Annotated[str | None, Query(pattern=STREAM_ID.pattern, description="Stream id.")]


@router.get(
    "/events",
    summary="Server-Sent Events: the caller's own job outcomes",
    response_class=StreamingResponse,
    responses={200: {"description": "An event stream", "content": {"text/event-stream": {}}},
               **responses(422)},
)  # fmt: skip
async def events(
    request: Request,
    caller: CallerDep,
    res: ResourcesDep,
    after: StreamId = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    start = after or (last_event_id if last_event_id and STREAM_ID.match(last_event_id) else None)
    if res.open_streams >= res.settings.api_max_event_streams:
        raise ServiceUnavailable("too many open event streams on this server: retry shortly")
    if start is None:
        newest = await res.events_redis.xrevrange(res.settings.stream, count=1)
        start = newest[0][0].decode() if newest else "0-0"
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(_stream(request, caller, res, start), media_type="text/event-stream",
                             headers=headers)  # fmt: skip


async def _stream(
    request: Request, caller: Caller, res: Resources, after: str
) -> AsyncIterator[str]:
    checked = time.monotonic()
    res.open_streams += 1
    try:
        yield f"retry: {RETRY_MS}\n: connected\n\n"
        while not await request.is_disconnected():
            if time.monotonic() - checked > RECHECK_TOKEN_S:
                try:
                    await run_in_threadpool(
                        tokens.credential_of, res.db, caller.credential.token_id
                    )
                except CreditsError:
                    yield 'event: end\ndata: {"reason": "credential no longer valid"}\n\n'
                    return
                checked = time.monotonic()
            found = await res.events_redis.xread({res.settings.stream: after}, count=BATCH,
                                                 block=BLOCK_MS)  # fmt: skip
            if not found:
                yield ": keep-alive\n\n"
                continue
            for _name, entries in found:
                for entry_id, fields in entries:
                    after = entry_id.decode()
                    event = {k.decode(): v.decode() for k, v in fields.items()}
                    if caller.member_id is None or event.get("member_id") == str(caller.member_id):
                        yield f"id: {after}\nevent: outcome\ndata: {json.dumps(typed(event))}\n\n"
    finally:
        res.open_streams -= 1
