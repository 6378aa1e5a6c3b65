"""Alembic migrations, run with ``credits db upgrade`` (see :func:`upgrade`), and the app
role's privileges, set with ``credits db grant --app-role NAME`` (:func:`grant_app_role`)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

HERE = Path(__file__).resolve().parent
APP_GRANTS = HERE / "app_grants.sql"


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    # Alembic's ini interpolation treats % specially; URLs may contain %-escapes.
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


def current(database_url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def grant_app_role(database_url: str, app_role: str) -> None:
    """Give ``app_role`` what the app needs and no more (``app_grants.sql``), as the owner.

    The app reads and writes rows; the ledger's append-only tables it may only insert into
    and read; the schema and its version are the owner's. Idempotent: the whole state is
    set each time. PostgreSQL only: SQLite has no roles.
    """
    from psycopg import sql
    from sqlalchemy import create_engine, text

    from shared.errors import InvalidRequest, NotFound

    engine = create_engine(database_url)
    try:
        if engine.dialect.name != "postgresql":
            raise InvalidRequest("db grant needs PostgreSQL: SQLite has no roles")
        with engine.begin() as conn:
            raw = conn.connection.dbapi_connection
            if conn.scalar(text("SELECT current_user")) == app_role:
                raise InvalidRequest(f"connect as the owner role to grant, not as {app_role!r}")
            exists = conn.scalar(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": app_role})
            if exists is None:
                raise NotFound("role", app_role)
            statements = sql.SQL(APP_GRANTS.read_text()).format(app_role=sql.Identifier(app_role))
            raw.cursor().execute(statements)
    finally:
        engine.dispose()
