"""Compose's `migrate` service: migrate as the owner role, then set the app role's grants.

    python migrate.py --app-role credits_app

1. ``credits db upgrade`` with this process's environment: CREDITS_DATABASE_URL is the
   owner's URL, so the owner creates, and owns, every table.
2. ``app-grants.sql`` (next to this file), as the same owner, in one transaction: the app
   role may read and write rows, may only insert into and read the append-only ledger
   tables, and only read ``alembic_version``.

Run it after every upgrade; it is idempotent. The app role itself comes from
``initdb/10-credits-app-role.sh``. This script uses only the standard library and psycopg,
which the image has. (A ``credits db grant --app-role NAME`` command would make it
unnecessary.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

GRANTS_SQL = Path(__file__).with_name("app-grants.sql")
EXIT_BAD_INPUT = 2


def conninfo(url: str) -> str:
    """A libpq URI from an SQLAlchemy-style URL (``postgresql+psycopg://`` and the like)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in ("postgresql", "postgres"):
        raise SystemExit(f"migrate.py: CREDITS_DATABASE_URL is not a PostgreSQL URL ({scheme})")
    return urlunsplit(("postgresql", *parts[1:]))


def upgrade() -> int:
    credits = shutil.which("credits")
    if credits is None:
        print("migrate.py: the `credits` command is not on PATH", file=sys.stderr)
        return EXIT_BAD_INPUT
    return subprocess.run([credits, "db", "upgrade"], check=False).returncode


def grant(url: str, app_role: str) -> None:
    import psycopg
    from psycopg import sql

    statements = sql.SQL(GRANTS_SQL.read_text()).format(app_role=sql.Identifier(app_role))
    with psycopg.connect(conninfo(url), connect_timeout=10) as conn:
        user = conn.execute("SELECT current_user").fetchone()[0]
        if user == app_role:
            raise SystemExit(f"migrate.py: connect as the owner role, not as {app_role!r}")
        if (
            conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (app_role,)).fetchone()
            is None
        ):
            raise SystemExit(
                f"migrate.py: role {app_role!r} does not exist; create it with "
                "deploy/postgres/initdb/10-credits-app-role.sh (see that file)"
            )
        conn.execute(statements)  # one transaction: psycopg commits when the block ends
    print(f"migrate.py: privileges of {app_role!r} set from {GRANTS_SQL.name}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--app-role", required=True, help="the app's least-privilege role")
    args = parser.parse_args(argv)
    url = os.environ.get("CREDITS_DATABASE_URL")
    if not url:
        print("migrate.py: set CREDITS_DATABASE_URL to the owner's URL", file=sys.stderr)
        return EXIT_BAD_INPUT
    code = upgrade()
    if code != 0:
        return code
    grant(url, args.app_role)
    return 0


if __name__ == "__main__":
    sys.exit(main())
