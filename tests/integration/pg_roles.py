"""A PostgreSQL database of a test's own, set up as compose sets up ``credits``.

Two uniquely named roles: an owner (compose's POSTGRES_USER, who owns the database and runs
the migrations) and an app role, created by the compose init script itself. Both roles and
the database are dropped afterwards. Roles are cluster-wide, hence the unique names.

The owner gets CREATEROLE instead of compose's superuser, so the init script is shown to
need no more than that. The local server trusts its clients, so passwords are not checked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tests.services import PG_ADMIN_URL, missing, pg_admin

ROOT = Path(__file__).resolve().parents[2]
INIT_SCRIPT = ROOT / "deploy" / "postgres" / "initdb" / "10-credits-app-role.sh"


@dataclass(frozen=True)
class RoledDatabase:
    name: str
    owner: str
    app: str

    def url(self, role: str, password: str | None = None) -> str:
        server = urlsplit(PG_ADMIN_URL)
        secret = f":{password}" if password else ""
        return f"postgresql://{role}{secret}@{server.hostname}:{server.port or 5432}/{self.name}"

    def connect(self, role: str):
        import psycopg

        return psycopg.connect(self.url(role), autocommit=True, connect_timeout=5)

    def init_env(self, app_password: str, base: dict[str, str] | None = None) -> dict[str, str]:
        """The postgres container's environment for its init scripts, aimed at this server."""
        server = urlsplit(PG_ADMIN_URL)
        env = dict(os.environ if base is None else base)
        env.update(
            PGHOST=server.hostname or "127.0.0.1",
            PGPORT=str(server.port or 5432),
            POSTGRES_USER=self.owner,
            POSTGRES_DB=self.name,
            POSTGRES_APP_USER=self.app,
            POSTGRES_APP_PASSWORD=app_password,
        )
        return env


@dataclass(frozen=True)
class Roles:
    owner: str
    app: str


@contextmanager
def roles(prefix: str = "credits_roles") -> Iterator[Roles]:
    """The owner role, created here, and the app role's name; both are dropped at the end.

    The app role itself is the init script's to create. Drop every database of these
    roles first: a role that owns one cannot be dropped.
    """
    from psycopg import sql

    suffix = uuid.uuid4().hex[:10]
    names = Roles(f"{prefix}_owner_{suffix}", f"{prefix}_app_{suffix}")
    with closing(pg_admin()) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE").format(sql.Identifier(names.owner)))
    try:
        yield names
    finally:
        with closing(pg_admin()) as conn:
            for role in (names.app, names.owner):  # the app role first: the owner created it
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@contextmanager
def database(names: Roles, template: str | None = None) -> Iterator[RoledDatabase]:
    """A database owned by ``names.owner``, empty or a copy of ``template``; dropped after."""
    from psycopg import sql

    db = RoledDatabase(f"credits_roles_{uuid.uuid4().hex[:12]}", names.owner, names.app)
    copy = sql.SQL(" TEMPLATE {}").format(sql.Identifier(template)) if template else sql.SQL("")
    with closing(pg_admin()) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}{}").format(
                sql.Identifier(db.name), sql.Identifier(db.owner), copy
            )
        )
    try:
        yield db
    finally:
        with closing(pg_admin()) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db.name))
            )


def run_init_script(env: dict[str, str], script: Path = INIT_SCRIPT) -> None:
    """Run a compose init script the way the postgres image does, against the local server."""
    if shutil.which("psql") is None:
        missing("psql is not installed (apt-get install postgresql-client)")
    result = subprocess.run(
        ["/bin/sh", str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"{script.name} failed:\n{result.stdout}{result.stderr}"
