"""Unit tests run on SQLite and fakeredis: fast, no servers."""

import pytest

from shared.db import Database


@pytest.fixture
def db(sqlite_db: Database) -> Database:
    return sqlite_db
