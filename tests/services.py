"""Real services for tests: PostgreSQL databases and Redis DBs, one per test.

Under ``CI=true`` a missing service fails the test; elsewhere it skips with the reason,
so a laptop without PostgreSQL can still run the unit tests.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from contextlib import closing
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
PG_ADMIN_URL = os.environ.get(
    "CREDITS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("CREDITS_TEST_REDIS_URL", "redis://127.0.0.1:6379")


def missing(reason: str) -> None:
    """Fail under CI, skip elsewhere: a test that needs a service must not pass silently."""
    if IN_CI:
        pytest.fail(f"required service missing under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def pg_admin():
    import psycopg

    try:
        return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        missing(f"PostgreSQL at {PG_ADMIN_URL} is not answering: {exc}")


def pg_url_for(name: str) -> str:
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


def create_pg_database(template: str | None = None, prefix: str = "credits_t") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with closing(pg_admin()) as conn:
        suffix = f" TEMPLATE {template}" if template else ""
        conn.execute(f'CREATE DATABASE "{name}"{suffix}')
    return name


def drop_pg_database(name: str) -> None:
    with closing(pg_admin()) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def redis_client(db: int = 0):
    import redis

    client = redis.Redis.from_url(f"{REDIS_URL}/{db}", socket_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        missing(f"Redis at {REDIS_URL} is not answering: {exc}")
    return client


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with closing(socket.socket()) as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout_s}s")


def private_redis(
    tmp_path: Path,
    password: str | None = None,
    *,
    appendonly: bool = False,
    port: int | None = None,
) -> tuple[subprocess.Popen, int]:
    """A redis-server of the test's own, for tests that restart or kill it.

    With ``password`` it runs with ``--requirepass``, as in docker-compose.yml; with
    ``appendonly`` it fsyncs every write to an AOF in ``tmp_path``, so a restart on the
    same ``port`` comes back with its data.
    """
    exe = shutil.which("redis-server")
    if exe is None:
        missing("redis-server is not installed")
    port = port or free_port()
    auth = ["--requirepass", password] if password is not None else []
    aof = (
        ["--appendonly", "yes", "--appendfsync", "always"] if appendonly else ["--appendonly", "no"]
    )
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *aof,
         "--dir", str(tmp_path), "--maxmemory-policy", "noeviction", *auth],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for_port(port)
    return proc, port
