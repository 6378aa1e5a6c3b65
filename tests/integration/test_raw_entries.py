"""No raw queue entry stops a worker: a hypothesis fuzzer pushes raw entries straight onto
a real Redis queue (as ``redis-cli LPUSH`` would) under an in-process worker that runs the
project's own transport, and checks that the worker stays up, nobody is charged, and
every entry is either processed or kept as a dead letter with its raw bytes and queue."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker
from celery.signals import task_postrun
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, func, select

from shared.config import Settings, load_settings
from shared.db import Database
from shared.models import DeadLetter, Job, LedgerEntry
from tests.factories import ALL_DELIVERED, SIGNING_KEY, funded_member, gift_card
from tests.helpers import wait_until
from tests.services import REDIS_URL, redis_client
from worker.factory import create_app

QUEUE = "credits.flow"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
task_names = st.sampled_from(["credits.send_action", "credits.noop", "no.such.task", "", None])
content_types = st.sampled_from(
    ["application/json", "application/x-python-serialize", "text/plain", "", None]
)


@st.composite
def envelopes(draw: Any) -> bytes:
    """Things shaped like kombu's Redis envelope, right or wrong in every part."""
    body = draw(json_values.map(json.dumps) | st.text(max_size=40))
    encoding = draw(st.sampled_from(["base64", "utf-8", "rot13", None]))
    if encoding == "base64" and draw(st.booleans()):
        body = base64.b64encode(body.encode()).decode()
    properties: dict[str, Any] = {"body_encoding": encoding}
    if draw(st.booleans()):
        properties["delivery_tag"] = draw(st.text(max_size=12) | st.integers())
    properties["delivery_info"] = {"exchange": QUEUE, "routing_key": QUEUE}
    headers = {"task": draw(task_names), "id": str(uuid.uuid4()), "lang": "py",
               "argsrepr": "()", "kwargsrepr": "{}"}  # fmt: skip
    envelope = {"body": body, "content-type": draw(content_types),
                "content-encoding": "utf-8", "headers": headers,
                "properties": properties}  # fmt: skip
    if draw(st.booleans()):
        envelope.pop(draw(st.sampled_from(sorted(envelope))))
    return json.dumps(envelope).encode()


raw_entries = (
    st.binary(max_size=60) | json_values.map(lambda v: json.dumps(v).encode()) | envelopes()
)


@pytest.fixture
def world(pg_url: str, redis_db: int) -> Iterator[tuple[Settings, Database, Any]]:
    prefix = f"fz{uuid.uuid4().hex[:6]}:"
    settings_ = load_settings(
        database_url=pg_url, redis_url=f"{REDIS_URL}/{redis_db}", key_prefix=prefix,
        job_signing_key=SIGNING_KEY, stub_latency_ms=0, **ALL_DELIVERED,
    )  # fmt: skip
    database = Database(pg_url)
    app = create_app(settings_)
    with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False,
                      shutdown_timeout=20, loglevel="WARNING"):  # fmt: skip
        yield settings_, database, redis_client(redis_db)
    database.dispose()


def counts(database: Database) -> tuple[int, int, int]:
    with database.unit_of_work() as session:
        return (
            session.scalar(select(func.count(DeadLetter.id))),
            session.scalar(select(func.count(Job.id))),
            session.scalar(select(func.count(LedgerEntry.id))),
        )


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(entries=st.lists(raw_entries, min_size=1, max_size=5))
def test_fuzzed_raw_entries_never_stop_the_worker_nor_charge_anyone(world, entries) -> None:
    settings_, database, redis = world
    with database.unit_of_work() as session:
        session.execute(delete(DeadLetter))
        session.commit()
    _letters, jobs_before, entries_before = counts(database)
    finished: list[str] = []
    lock = threading.Lock()

    def on_done(sender: Any = None, **_: Any) -> None:
        with lock:
            finished.append(sender.name)

    task_postrun.connect(on_done, weak=False)
    try:
        # when raw entries land on the queue, as redis-cli LPUSH would put them
        for entry in entries:
            redis.lpush(f"{settings_.key_prefix}{QUEUE}", entry)
        # then each one is consumed, and is either processed or kept as a dead letter
        wait_until(lambda: redis.llen(f"{settings_.key_prefix}{QUEUE}") == 0, 30,
                   "the queue to drain")  # fmt: skip
        wait_until(lambda: counts(database)[0] + len(finished) >= len(entries), 30,
                   "every entry to be processed or dead-lettered")  # fmt: skip
    finally:
        task_postrun.disconnect(on_done)
    letters, jobs_after, entries_after = counts(database)
    assert letters + len(finished) >= len(entries)
    assert (jobs_after, entries_after) == (jobs_before, entries_before)  # nobody charged


def test_a_real_worker_keeps_lpushed_garbage_and_still_runs_a_signed_job(world) -> None:
    settings_, database, redis = world
    member = funded_member(database, account_credits=100, member_credits=50).member_id
    garbage = [b"not json", b"[1, 2, 3]", b'{"body": "!!!", "properties": '
               b'{"body_encoding": "base64", "delivery_tag": "x"}}', b"\xff\xfe"]  # fmt: skip
    for entry in garbage:
        redis.lpush(f"{settings_.key_prefix}{QUEUE}", entry)
    from shared.client import CreditsClient

    client = CreditsClient(settings=settings_)
    try:
        client.send_action(gift_card("g-1", member, 25))
    finally:
        client.close()
    wait_until(lambda: counts(database)[1] == 1 and _final(database), 30, "the gift card")
    with database.unit_of_work() as session:
        kept = session.execute(
            select(DeadLetter.raw, DeadLetter.queue).order_by(DeadLetter.id)
        ).all()
    assert [row.raw for row in kept] == garbage
    assert {row.queue for row in kept} == {QUEUE}


def _final(database: Database) -> bool:
    with database.unit_of_work() as session:
        return session.scalar(select(Job.status)) == "completed"
