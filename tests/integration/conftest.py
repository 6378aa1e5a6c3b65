"""Integration tests run on real PostgreSQL and Redis (and real Celery workers)."""

import pytest

from shared.db import Database


@pytest.fixture
def db(pg_db: Database) -> Database:
    return pg_db
