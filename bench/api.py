"""Requests per second and p99 latency of the HTTP API: "who am I" and an allocation.

The server is the real thing: ``credits serve --workers 2`` (uvicorn, one process per
core of a 2-core machine) on PostgreSQL and Redis, with its access log on, as deployed.
The load comes from this process: keep-alive HTTP/1.1 connections on asyncio, each
sending its next request as soon as the last answer arrived (closed loop). On a 2-core
machine the load generator shares the cores with the server, so the figures are a floor.

- "who am I": ``GET /v1/me``: token check, then the member, workspace, account and wallet.
- allocation: ``POST /v1/allocations`` of 1 credit with a fresh Idempotency-Key, each
  connection to a member of its own workspace (a team page's edit), so rows are not
  shared between connections; every request writes one ledger transaction.

    python -m bench.api [--seconds 10] [--connections 16] [--json bench-api.json]

``run(...)`` returns the figures as a dict, for ``make bench``. Needs PostgreSQL
(CREDITS_BENCH_PG_URL, default postgresql://postgres@127.0.0.1:5432/postgres) and Redis
(CREDITS_BENCH_REDIS_URL, default redis://127.0.0.1:6379/15; only keys under a fresh
prefix are written, and deleted afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from entrypoints.processes import stop_group

PG_ADMIN = os.environ.get("CREDITS_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("CREDITS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
SIGNING_KEY = "bench:" + "b" * 40
TEAMS = 16
MAX_SECONDS = 120
MAX_CONNECTIONS = 256


# ---------------------------------------------------------------- the world and the server


@contextmanager
def database() -> Iterator[str]:
    import psycopg

    name = f"credits_bench_api_{uuid.uuid4().hex[:8]}"
    base = PG_ADMIN.rpartition("/")[0]
    with closing(psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{base}/{name}"
    finally:
        with closing(psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed(url: str) -> tuple[str, list[int]]:
    """An account with TEAMS workspaces of one member each; the owner's token."""
    from shared.db import Database
    from shared.migrations import upgrade
    from shared.services import directory, ledger, tokens

    upgrade(url)
    db = Database(url)
    try:
        account = directory.create_account(db, "Bench", credits=10**9)
        members = []
        for n in range(TEAMS):
            ws = directory.create_workspace(db, account.id, f"Team {n}")
            ledger.allocate(db, "workspace", ws.id, amount=10**7)
            role = "owner" if n == 0 else "member"
            members.append(directory.add_member(db, ws.id, f"Member {n}", role=role).id)
        token = tokens.create_token(db, member_id=members[0], name="bench").token
    finally:
        db.dispose()
    return token, members


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def server(url: str, prefix: str, workers: int) -> Iterator[int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITS_")}
    env |= {"CREDITS_DATABASE_URL": url, "CREDITS_REDIS_URL": REDIS_URL,
            "CREDITS_BROKER_URL": REDIS_URL, "CREDITS_KEY_PREFIX": prefix,
            "CREDITS_JOB_SIGNING_KEY": SIGNING_KEY}  # fmt: skip
    credits = str(Path(sys.executable).with_name("credits"))
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([credits, "serve", "--port", str(port), "--workers", str(workers)],
                                env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        try:
            _wait_ready(proc, port, log)
            yield port
        finally:
            stop_group(proc)


def _wait_ready(proc: subprocess.Popen, port: int, log: Any, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"credits serve exited:\n{log.read().decode(errors='replace')}")
        with closing(socket.socket()) as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                time.sleep(1.0)  # let every worker process finish starting
                return
        time.sleep(0.1)
    raise TimeoutError(f"credits serve did not listen on {port} within {timeout_s}s")


def _delete_keys(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        client.delete(key)


# ---------------------------------------------------------------- the load


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def _connection(
    port: int, request: Callable[[int], bytes], until: float, warm_until: float,
    latencies: list[float], errors: list[int], conn: int,
) -> None:  # fmt: skip
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    n = 0
    try:
        while (start := time.perf_counter()) < until:
            writer.write(request(conn * 10_000_000 + n))
            status = await _read_response(reader)
            n += 1
            if start >= warm_until:
                latencies.append(time.perf_counter() - start)
                if status >= 400:
                    errors.append(status)
    finally:
        writer.close()


async def _load(port: int, request: Callable[[int], bytes], seconds: float, connections: int):
    latencies: list[float] = []
    errors: list[int] = []
    warm_until = time.perf_counter() + min(2.0, seconds / 5)
    until = warm_until + seconds
    await asyncio.gather(*(_connection(port, request, until, warm_until, latencies, errors, c)
                           for c in range(connections)))  # fmt: skip
    return latencies, errors


def measure(port: int, request: Callable[[int], bytes], seconds: float, connections: int):
    latencies, errors = asyncio.run(_load(port, request, seconds, connections))
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return {"requests": len(latencies), "rps": round(len(latencies) / seconds, 1),
            "p50_ms": round(pct(0.50), 2), "p99_ms": round(pct(0.99), 2),
            "max_ms": round(latencies[-1] * 1000, 2), "errors": len(errors),
            "error_statuses": sorted(set(errors))}  # fmt: skip


def me_request(token: str) -> Callable[[int], bytes]:
    raw = (f"GET /v1/me HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n\r\n").encode()
    return lambda _n: raw


def allocation_request(token: str, members: list[int]) -> Callable[[int], bytes]:
    def build(n: int) -> bytes:
        member = members[(n // 10_000_000) % len(members)]
        body = json.dumps({"member_id": member, "amount": 1}).encode()
        head = (f"POST /v1/allocations HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}"
                f"\r\nIdempotency-Key: bench-{n}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")  # fmt: skip
        return head.encode() + body

    return build


# ---------------------------------------------------------------- the run


def run(seconds: float = 10.0, connections: int = 16, workers: int = 2,
        json_path: str | None = "bench-api.json") -> dict[str, Any]:  # fmt: skip
    """Bench both operations; print a table; write JSON to ``json_path`` (None: don't)."""
    if not 1 <= seconds <= MAX_SECONDS or not 1 <= connections <= MAX_CONNECTIONS:
        raise ValueError(f"seconds must be 1..{MAX_SECONDS}, connections 1..{MAX_CONNECTIONS}")
    prefix = f"bench{uuid.uuid4().hex[:6]}:"
    results: dict[str, Any] = {"server": f"credits serve --workers {workers} (uvicorn)",
                               "cores": os.cpu_count(), "seconds": seconds,
                               "connections": connections, "operations": {}}  # fmt: skip
    with database() as url:
        token, members = seed(url)
        try:
            with server(url, prefix, workers) as port:
                results["operations"]["who am I (GET /v1/me)"] = measure(
                    port, me_request(token), seconds, connections)  # fmt: skip
                results["operations"]["allocation (POST /v1/allocations)"] = measure(
                    port, allocation_request(token, members), seconds, connections)  # fmt: skip
        finally:
            _delete_keys(prefix)
    print_table(results)
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {json_path}")
    return results


def print_table(results: dict[str, Any]) -> None:
    head = f"{results['connections']} keep-alive connections, {results['seconds']:g}s each"
    print(f"\nHTTP API: {results['server']} on {results['cores']} cores, {head}")
    print(f"  {'operation':<36}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'errors':>8}")
    for name, row in results["operations"].items():
        print(f"  {name:<36}{row['rps']:>9,.0f}{row['p50_ms']:>9.1f}{row['p99_ms']:>9.1f}"
              f"{row['max_ms']:>9.1f}{row['errors']:>8}")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", default="bench-api.json", help="Where to write the figures.")
    args = parser.parse_args(argv)
    run(args.seconds, args.connections, args.workers, args.json)


if __name__ == "__main__":
    main()
