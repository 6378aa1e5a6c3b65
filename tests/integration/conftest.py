"""Integration tests run on real PostgreSQL and Redis (and real Celery worker processes)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.db import Database
from tests.integration.harness import Stack
from tests.services import REDIS_URL, RabbitVhosts, redis_client

REDIS_TEST_DBS = range(1, 16)
CLAIM_KEY = "credits-test:claimed"


@pytest.fixture(autouse=True)
def _no_developer_settings(clean_environment: None) -> None:
    """Settings built in the test process see only what the test gives them."""


@pytest.fixture
def db(pg_db: Database) -> Database:
    return pg_db


@pytest.fixture
def redis_db() -> Iterator[int]:
    """An empty Redis DB number of this test's own, flushed afterwards."""
    for number in REDIS_TEST_DBS:
        client = redis_client(number)
        # Claim the DB with a marker key; SET NX makes the claim safe against a parallel run.
        if client.dbsize() == 0 and client.set(CLAIM_KEY, "1", nx=True):
            try:
                yield number
            finally:
                client.flushdb()
            return
    pytest.fail("no empty Redis DB (1-15) left for this test")


@pytest.fixture(scope="session")
def rabbit_vhosts() -> Iterator[RabbitVhosts]:
    vhosts = RabbitVhosts()
    try:
        yield vhosts
    finally:
        vhosts.close()


@pytest.fixture
def broker(request: pytest.FixtureRequest) -> str:
    """This test's broker: "redis" unless the test runs ``on_both_brokers``."""
    return getattr(request, "param", "redis")


@pytest.fixture
def broker_url(broker: str, request: pytest.FixtureRequest) -> str | None:
    """None for the test's Redis DB; for "amqp", a fresh RabbitMQ vhost of its own (under
    CI=true a missing RabbitMQ fails the test)."""
    if broker == "redis":
        return None
    return request.getfixturevalue("rabbit_vhosts").take()


@pytest.fixture
def stack(pg_url: str, redis_db: int, broker_url: str | None, tmp_path: Path) -> Iterator[Stack]:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    world = Stack(pg_url, f"{REDIS_URL}/{redis_db}", prefix, tmp_path, broker_url=broker_url)
    try:
        yield world
    finally:
        world.stop()
