"""The app's PostgreSQL role can read and write rows, and nothing more; the owner migrates.

Against the real server, a database is built the way the compose stack builds it: an
owner role, the compose init script (deploy/postgres/initdb/) creating the app role, then
the migrate service's own commands (`credits db upgrade`, then `credits db grant`, which
applies shared/migrations/app_grants.sql) as the owner, and an account topped up through
the CLI as the app role. That is done once, as a template; each test gets a copy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.pg_roles import (
    RoledDatabase,
    Roles,
    database,
    roles,
    run_init_script,
)

pytestmark = pytest.mark.postgres

VENV_BIN = Path(sys.executable).parent
APPEND_ONLY = ("ledger_entries", "ledger_transactions", "job_transitions")
APP_PASSWORD = "app-secret-not-checked-locally"


def credits_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITS_")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["CREDITS_DATABASE_URL"] = url
    return env


def run_migrate(db: RoledDatabase, role: str, app_role: str) -> subprocess.CompletedProcess:
    """What compose's migrate service runs: the migrations, then the app role's grants."""
    credits = VENV_BIN / "credits"
    return subprocess.run(
        ["sh", "-c", f'"{credits}" db upgrade && "{credits}" db grant --app-role "$1"',
         "migrate", app_role],
        env=credits_env(db.url(role)),
        capture_output=True,
        text=True,
        timeout=180,
    )  # fmt: skip


def run_credits(db: RoledDatabase, role: str, *args: str) -> dict:
    result = subprocess.run(
        [str(VENV_BIN / "credits"), *args, "--json"],
        env=credits_env(db.url(role)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"credits {' '.join(args)} failed:\n{result.stderr}"
    return json.loads(result.stdout)


def denied(conn, statement: str) -> bool:
    """True when PostgreSQL refuses ``statement`` for lack of privilege (SQLSTATE 42501)."""
    import psycopg

    try:
        conn.execute(statement)
    except psycopg.errors.InsufficientPrivilege:
        return True
    return False


@pytest.fixture(scope="module")
def module_roles() -> Iterator[Roles]:
    with roles() as names:
        yield names


@pytest.fixture(scope="module")
def migrated_template(module_roles: Roles) -> Iterator[str]:
    with database(module_roles) as db:
        run_init_script(db.init_env(APP_PASSWORD))
        result = run_migrate(db, db.owner, db.app)
        assert result.returncode == 0, f"migrate failed:\n{result.stdout}{result.stderr}"
        run_credits(db, db.app, "account", "create", "Acme", "--credits", "50")
        yield db.name


@pytest.fixture
def fresh(module_roles: Roles) -> Iterator[RoledDatabase]:
    """Compose's postgres on first start: the owner's empty database, and the app role."""
    with database(module_roles) as db:
        run_init_script(db.init_env(APP_PASSWORD))
        yield db


@pytest.fixture
def migrated(module_roles: Roles, migrated_template: str) -> Iterator[RoledDatabase]:
    with database(module_roles, template=migrated_template) as db:
        run_init_script(db.init_env(APP_PASSWORD))  # a copy does not inherit CONNECT grants
        yield db


def tables(db: RoledDatabase) -> list[str]:
    with db.connect(db.owner) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
        ).fetchall()
    return [name for (name,) in rows]


def test_the_owner_owns_every_table_and_the_app_role_is_a_plain_login(
    migrated: RoledDatabase,
) -> None:
    with migrated.connect(migrated.owner) as conn:
        owners = set(
            conn.execute("SELECT tableowner FROM pg_tables WHERE schemaname = 'public'").fetchall()
        )
        attributes = conn.execute(
            "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication, "
            "rolbypassrls FROM pg_roles WHERE rolname = %s",
            (migrated.app,),
        ).fetchone()
    assert owners == {(migrated.owner,)}
    assert {"wallets", "alembic_version", *APPEND_ONLY} <= set(tables(migrated))
    assert attributes == (True, False, False, False, False, False)


def test_the_app_role_runs_the_ledger_and_writes_wallets(migrated: RoledDatabase) -> None:
    # The product itself, as the app role: a top-up and a reconcile (the template made one).
    run_credits(migrated, migrated.app, "account", "create", "Beta", "--credits", "20")
    assert run_credits(migrated, migrated.app, "reconcile")["ok"] is True

    with migrated.connect(migrated.app) as conn:
        # wallets: insert (drawing an id from its sequence), select, update, delete
        (wallet,) = conn.execute(
            "INSERT INTO wallets (kind, available, held, created_at) "
            "VALUES ('account', 0, 0, now()) RETURNING id"
        ).fetchone()
        conn.execute("UPDATE wallets SET available = 7 WHERE id = %s", (wallet,))
        row = conn.execute("SELECT available FROM wallets WHERE id = %s", (wallet,)).fetchone()
        assert row == (7,)
        conn.execute("DELETE FROM wallets WHERE id = %s", (wallet,))
        # the ledger: two top-ups, two entries each, balanced
        assert conn.execute("SELECT count(*), sum(amount) FROM ledger_entries").fetchone() == (4, 0)
        # the schema version: readable only
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()
        assert denied(conn, "UPDATE alembic_version SET version_num = 'x'")
        assert denied(conn, "DELETE FROM alembic_version")


@pytest.mark.parametrize("table", APPEND_ONLY)
def test_the_app_role_can_only_add_to_and_read_the_append_only_tables(
    migrated: RoledDatabase, table: str
) -> None:
    with migrated.connect(migrated.owner) as conn:
        before = conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
    with migrated.connect(migrated.app) as conn:
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        first = f"(SELECT min(id) FROM {table})"
        assert denied(conn, f"UPDATE {table} SET id = id WHERE id = {first}")
        assert denied(conn, f"DELETE FROM {table}")
        assert denied(conn, f"TRUNCATE {table}")
    with migrated.connect(migrated.owner) as conn:
        after = conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
        privileges = {
            p
            for p in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")
            if conn.execute(
                "SELECT has_table_privilege(%s, %s, %s)", (migrated.app, table, p)
            ).fetchone()[0]
        }
    assert after == before
    assert privileges == {"SELECT", "INSERT"}
    if table != "job_transitions":  # jobs need a worker; test_compose runs one as the app role
        assert before, f"the top-up wrote nothing to {table}?"


def test_the_app_role_cannot_change_the_schema(migrated: RoledDatabase) -> None:
    with migrated.connect(migrated.owner) as conn:
        sequences = [
            name
            for (name,) in conn.execute(
                "SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'"
            ).fetchall()
        ]
    assert sequences, "no sequences: the ids are not drawn the way this test assumes"
    with migrated.connect(migrated.app) as conn:
        refused = {
            statement: denied(conn, statement)
            for table in tables(migrated)
            for statement in (
                f"DROP TABLE {table}",
                f"ALTER TABLE {table} ADD COLUMN intruder integer",
                f"ALTER TABLE {table} DISABLE TRIGGER ALL",
                f"TRUNCATE {table}",
                f"CREATE INDEX ix_intruder_{table} ON {table} (id)",
            )
        }
        refused |= {
            statement: denied(conn, statement)
            for sequence in sequences
            for statement in (f"DROP SEQUENCE {sequence}", f"ALTER SEQUENCE {sequence} RESTART")
        }
        refused |= {
            statement: denied(conn, statement)
            for statement in (
                "CREATE TABLE intruder (id integer)",
                "CREATE TEMP TABLE intruder (id integer)",
                "CREATE VIEW intruder AS SELECT 1",
                "CREATE FUNCTION intruder() RETURNS int LANGUAGE sql AS 'SELECT 1'",
                "CREATE SCHEMA intruder",
                "DROP SCHEMA public CASCADE",
            )
        }
        # A GRANT without the grant option is only a warning; what matters is that it has none.
        passable = [
            table
            for table in tables(migrated)
            if conn.execute(
                "SELECT has_table_privilege(current_user, %s, 'SELECT WITH GRANT OPTION')",
                (table,),
            ).fetchone()[0]
        ]
    assert [statement for statement, ok in refused.items() if not ok] == []
    assert passable == []


def test_tables_of_later_migrations_are_the_app_roles_and_migrate_can_run_again(
    migrated: RoledDatabase,
) -> None:
    # given: a table a later migration adds, created by the owner
    with migrated.connect(migrated.owner) as conn:
        conn.execute("CREATE TABLE later_table (id bigserial PRIMARY KEY, note text)")
    # then: the default privileges make its rows the app's, sequence included
    with migrated.connect(migrated.app) as conn:
        conn.execute("INSERT INTO later_table (note) VALUES ('x')")
        conn.execute("UPDATE later_table SET note = 'y'")
        assert conn.execute("SELECT note FROM later_table").fetchall() == [("y",)]
        assert denied(conn, "DROP TABLE later_table")
    # and: migrate runs again (as after an upgrade), and the append-only rule still holds
    again = run_migrate(migrated, migrated.owner, migrated.app)
    assert again.returncode == 0, again.stderr
    with migrated.connect(migrated.app) as conn:
        assert denied(conn, "DELETE FROM ledger_entries")
        conn.execute("DELETE FROM later_table")


def test_the_app_role_cannot_migrate_and_migrate_needs_the_app_role(
    fresh: RoledDatabase,
) -> None:
    as_app = run_migrate(fresh, fresh.app, fresh.app)
    assert as_app.returncode != 0
    assert "permission denied" in as_app.stdout + as_app.stderr
    missing_role = run_migrate(fresh, fresh.owner, f"{fresh.app}_nope")
    assert missing_role.returncode != 0
    assert f"role '{fresh.app}_nope' does not exist" in missing_role.stderr
    with fresh.connect(fresh.owner) as conn:
        # The migrations themselves did run (as the owner) before the grants were refused.
        assert conn.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)


def test_the_init_script_can_run_again_on_an_existing_volume(migrated: RoledDatabase) -> None:
    run_init_script(migrated.init_env("a-new-password"))
    with migrated.connect(migrated.app) as conn:
        assert conn.execute("SELECT count(*) FROM wallets").fetchone()[0] >= 2
        assert denied(conn, "CREATE TABLE intruder (id integer)")
