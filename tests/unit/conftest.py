"""Unit tests run on SQLite and fakeredis: fast, no servers.

Also the in-process Celery worker fixtures: a real worker in a thread on the
``memory://`` broker, with a producer client on the same broker.
"""

import uuid
from collections.abc import Iterator

import pytest
from celery.contrib.testing.worker import start_worker
from kombu import Connection

from shared.client import CreditsClient
from shared.config import Settings, load_settings
from shared.db import Database
from shared.queues import queues
from tests.factories import SIGNING_KEY, stub_rates
from worker.factory import create_app
from worker.resources import Resources, resources_for


@pytest.fixture
def db(sqlite_db: Database) -> Database:
    return sqlite_db


@pytest.fixture
def settings(sqlite_url: str) -> Settings:
    return load_settings(
        database_url=sqlite_url,
        redis_url=f"memory://{uuid.uuid4().hex}",
        broker_url="memory://",
        stub_latency_ms=0,
        **stub_rates(rejected=0.2, transient=0.15, timeout=0.05),
        stub_transient_attempts=1,
        job_signing_key=SIGNING_KEY,
        retry_backoff_base_s=0.05,
        retry_backoff_max_s=0.2,
    )


def purge_broker(settings: Settings) -> None:
    """The memory transport is process-global: start and end each test with empty queues."""
    with Connection(settings.broker) as conn:
        for queue in queues(settings):
            queue(conn.default_channel).declare()
            queue(conn.default_channel).purge()


@pytest.fixture
def empty_broker(settings: Settings) -> Iterator[None]:
    """Empty queues before the test, and after it for the next one."""
    purge_broker(settings)
    yield
    purge_broker(settings)


@pytest.fixture
def client(settings: Settings, empty_broker: None) -> Iterator[CreditsClient]:
    producer = CreditsClient(settings=settings)
    yield producer
    producer.close()


@pytest.fixture
def resources(settings: Settings, empty_broker: None) -> Iterator[Resources]:
    """What a worker process holds (database, fakeredis, stub vendor, a signing client),
    for driving the recovery sweeps directly, without a worker."""
    res = Resources(settings)
    yield res
    res.close()


@pytest.fixture
def worker(settings: Settings, client: CreditsClient) -> Iterator[None]:
    app = create_app(settings)
    with start_worker(
        app, pool="threads", concurrency=4, perform_ping_check=False, shutdown_timeout=20
    ):
        yield
    resources_for(settings).close()
