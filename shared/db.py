"""Engines and units of work.

A unit of work is one database transaction. It rolls back unless the caller calls
``commit()``, so a step that forgets to commit, or raises half-way, leaves nothing
behind. Work that must only happen once the transaction is durable (publishing an event)
is registered with ``after_commit`` and runs after ``commit()`` has returned.

SQLite gets ``BEGIN IMMEDIATE`` so that concurrent writers queue on the database lock
instead of failing half-way with "database is locked", and a busy timeout so they wait.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.orm import Session, sessionmaker

from shared.config import normalize_database_url
from shared.errors import SchemaMissing

SQLITE_BUSY_TIMEOUT_MS = 30_000
PG_STATEMENT_TIMEOUT_MS = 30_000


def make_engine(url: str, **kwargs: Any) -> Engine:
    url = normalize_database_url(url)
    if url.startswith("sqlite"):
        return _sqlite_engine(url, **kwargs)
    # No pre-ping: it costs a round trip on every unit of work. A connection that died
    # (a restart, a terminated backend) fails its first statement instead; SQLAlchemy then
    # drops the whole pool, and the task's retry runs the idempotent step again.
    kwargs.setdefault("pool_recycle", 1800)
    # A statement that waits on a lock this long means something is stuck: fail and retry.
    kwargs.setdefault(
        "connect_args", {"options": f"-c statement_timeout={PG_STATEMENT_TIMEOUT_MS}"}
    )
    return create_engine(url, **kwargs)


def _sqlite_engine(url: str, **kwargs: Any) -> Engine:
    # Pooled connections are handed between threads, one at a time.
    kwargs.setdefault("connect_args", {"check_same_thread": False})
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take over transaction control from pysqlite so BEGIN IMMEDIATE is ours to emit.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.execute("PRAGMA journal_mode = WAL")
        # WAL with NORMAL sync survives an application crash; only power loss can drop
        # the last commits. PostgreSQL is the production store.
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class UnitOfWork(Session):
    """A session that is one transaction: commit explicitly, or it is rolled back."""

    def after_commit(self, hook: Callable[[], object]) -> None:
        """Run ``hook`` once this unit of work has committed; never if it rolls back."""
        self.info.setdefault("after_commit", []).append(hook)

    def commit(self) -> None:
        super().commit()
        # Hooks run after the commit returned: an event never announces a change that
        # could still be rolled back. A hook that fails does not undo the commit; the
        # outbox sweeps (notify, republish) cover what it was meant to do.
        for hook in self.info.pop("after_commit", []):
            hook()

    def rollback(self) -> None:
        # Hooks announce what the transaction did; rolled back, it did nothing, so a later
        # commit of this session must not run them.
        self.info.pop("after_commit", None)
        super().rollback()


class Database:
    """An engine plus a session factory; hands out units of work."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = normalize_database_url(url)
        self.engine = make_engine(self.url, **engine_kwargs)
        self._sessions = sessionmaker(self.engine, class_=UnitOfWork, expire_on_commit=False)

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @contextmanager
    def unit_of_work(self) -> Iterator[UnitOfWork]:
        """Yield a unit of work. Nothing it wrote survives unless it called ``commit()``:
        on exit, clean or not, whatever is uncommitted is rolled back."""
        session = self._sessions()
        try:
            yield session
        finally:
            session.close()  # rolls back an open transaction; drops pending after-commit hooks

    def require_schema(self) -> None:
        if not inspect(self.engine).has_table("wallets"):
            raise SchemaMissing(
                f"the database at {self.engine.url.render_as_string(hide_password=True)} has "
                "no credits schema: run `credits db upgrade` first"
            )

    def dispose(self) -> None:
        self.engine.dispose()
