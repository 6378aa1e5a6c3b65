"""Fixtures: a migrated database per test, on SQLite (unit) or PostgreSQL (integration),
or on each in turn (``ledger_db``).

Migrations run once per session into a template; each test then gets a copy of its own
(a file copy for SQLite, ``CREATE DATABASE ... TEMPLATE`` for PostgreSQL), dropped after.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.db import Database
from shared.migrations import upgrade
from tests.services import create_pg_database, drop_pg_database, pg_url_for


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "credits.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "credits.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    name = create_pg_database(prefix="credits_tmpl")
    try:
        upgrade(pg_url_for(name))
        yield name
    finally:
        drop_pg_database(name)


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    name = create_pg_database(template=pg_template)
    try:
        yield pg_url_for(name)
    finally:
        drop_pg_database(name)


def _database(url: str) -> Iterator[Database]:
    database = Database(url)
    try:
        yield database
    finally:
        database.dispose()


@pytest.fixture
def sqlite_db(sqlite_url: str) -> Iterator[Database]:
    yield from _database(sqlite_url)


@pytest.fixture
def pg_db(pg_url: str) -> Iterator[Database]:
    yield from _database(pg_url)


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_db(request: pytest.FixtureRequest) -> Database:
    """The same test on both backends: SQLite (always) and PostgreSQL (``pg_db``: fails
    under CI=true and skips elsewhere when PostgreSQL is missing)."""
    return request.getfixturevalue({"sqlite": "sqlite_db", "postgres": "pg_db"}[request.param])


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CREDITS_* setting of the developer's shell leaks into a test."""
    import os

    for name in list(os.environ):
        if name.startswith("CREDITS_") and not name.startswith("CREDITS_TEST_"):
            monkeypatch.delenv(name)
