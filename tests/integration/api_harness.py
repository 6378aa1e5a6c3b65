"""A real API server for tests: ``credits serve`` as a child process on a free port, on
the test's own database, Redis DB and key prefix, with a seeded world of two accounts and
a token for every role."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from shared.db import Database
from shared.services import directory, ledger, tokens
from tests.factories import SIGNING_KEY
from tests.integration.harness import CeleryProcess, Stack
from tests.services import free_port

CREDITS = str(Path(sys.executable).with_name("credits"))


@dataclass
class World:
    """Acme (Sales: owner Olivia, admin Adam, member Mia; Support: admin Alex, member
    Nora) and Globex (owner Gus), with one token per person plus a support token."""

    account: int
    other_account: int
    sales: int
    support_ws: int
    members: dict[str, int]
    tokens: dict[str, str] = field(default_factory=dict)
    token_ids: dict[str, int] = field(default_factory=dict)


ROLES = {"owner": "Olivia", "admin": "Adam", "member": "Mia", "other": "Gus"}


def seed(db: Database) -> World:
    acme = directory.create_account(db, "Acme", credits=1000)
    globex = directory.create_account(db, "Globex", credits=500)
    sales = directory.create_workspace(db, acme.id, "Sales")
    support_ws = directory.create_workspace(db, acme.id, "Customer Success")
    other_ws = directory.create_workspace(db, globex.id, "Globex Sales")
    people = [("Olivia", sales.id, "owner"), ("Adam", sales.id, "admin"),
              ("Mia", sales.id, "member"), ("Alex", support_ws.id, "admin"),
              ("Nora", support_ws.id, "member"), ("Gus", other_ws.id, "owner")]  # fmt: skip
    members = {name: directory.add_member(db, ws, name, role=role).id for name, ws, role in people}
    ledger.allocate(db, "workspace", sales.id, amount=300)
    ledger.allocate(db, "workspace", support_ws.id, amount=200)
    ledger.allocate(db, "member", members["Mia"], amount=50)
    ledger.allocate(db, "member", members["Nora"], amount=40)
    world = World(acme.id, globex.id, sales.id, support_ws.id, members)
    made = {"support": tokens.create_token(db, member_id=None, name="ops")}
    for name, member_id in members.items():
        made[name] = tokens.create_token(db, member_id=member_id, name=f"{name} laptop")
    world.tokens = {who: t.token for who, t in made.items()}
    world.token_ids = {who: t.id for who, t in made.items()}
    return world


def api_env(stack: Stack, **extra: str) -> dict[str, str]:
    return stack.env(CREDITS_JOB_SIGNING_KEY=SIGNING_KEY, **extra)


class ApiServer(CeleryProcess):
    """``credits serve`` in a session of its own; ``stop()`` ends the whole group."""

    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)


def start_api(stack: Stack, *, workers: int = 1, **env: str) -> ApiServer:
    port = free_port()
    command = [CREDITS, "serve", "--port", str(port), "--workers", str(workers)]
    server = ApiServer(api_env(stack, **env), stack.tmp_path / f"api-{port}.log", "api",
                       command, b"Application startup complete.")  # fmt: skip
    server.port = port
    stack.workers.append(server.start())  # the stack stops it with its workers
    return server.wait_ready(60)
