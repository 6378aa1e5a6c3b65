"""Real services for tests: PostgreSQL databases, Redis DBs and RabbitMQ vhosts, one per
test, and a TCP gate that makes a server unreachable on cue.

Under ``CI=true`` a missing service fails the test; elsewhere it skips with the reason,
so a laptop without PostgreSQL can still run the unit tests.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
from contextlib import closing
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

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


# ---------------------------------------------------------------- RabbitMQ

AMQP_URL = os.environ.get("CREDITS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672")
VHOST_PREFIX = "credits-test-"
VHOST_BATCH = 8
_VHOST_NAME = re.compile(rf"{VHOST_PREFIX}(\d+)-\d+")
_ACTING_USER = '<<"credits-tests">>'


def _erlang_names(names: list[str]) -> str:
    return "[" + ", ".join(f'<<"{name}">>' for name in names) + "]"


class RabbitVhosts:
    """Fresh vhosts on the machine's RabbitMQ, one per test, made in batches.

    ``rabbitmqctl`` boots an Erlang VM for each call (about a second), so vhosts and their
    permissions are made ``VHOST_BATCH`` at a time in one ``rabbitmqctl eval``, and all of
    them -- with those left by an earlier run that died (named after its pid) -- deleted in
    one more call when the session ends. A vhost is never handed out twice.
    """

    def __init__(self, base_url: str = AMQP_URL) -> None:
        self.base_url = base_url.rstrip("/")
        self.user = urlsplit(self.base_url).username or "guest"
        self.free: list[str] = []
        self.made: list[str] = []
        self.stale: list[str] = []
        self._checked = False

    def take(self) -> str:
        """The URL of a vhost nobody has used."""
        if not self._checked:
            self._check()
        if not self.free:
            self._make(VHOST_BATCH)
        return f"{self.base_url}/{self.free.pop(0)}"

    def _check(self) -> None:
        server = urlsplit(self.base_url)
        with closing(socket.socket()) as sock:
            sock.settimeout(3)
            if sock.connect_ex((server.hostname, server.port or 5672)) != 0:
                missing(f"RabbitMQ is not answering at {server.hostname}:{server.port or 5672}")
        if shutil.which("rabbitmqctl") is None:
            missing("rabbitmqctl is not installed (it makes a vhost per test)")
        self._checked = True

    def _make(self, n: int) -> None:
        from bench.services import rabbitmqctl

        first = len(self.made)
        names = [f"{VHOST_PREFIX}{os.getpid()}-{first + i}" for i in range(n)]
        perms = '<<".*">>, <<".*">>, <<".*">>'
        out = rabbitmqctl("eval", f"""
            Old = [V || V <- rabbit_vhost:list_names(),
                        binary:longest_common_prefix([V, <<"{VHOST_PREFIX}">>])
                            =:= {len(VHOST_PREFIX)}],
            [begin
                 rabbit_vhost:add(V, {_ACTING_USER}),
                 ok = rabbit_auth_backend_internal:set_permissions(
                     <<"{self.user}">>, V, {perms}, {_ACTING_USER})
             end || V <- {_erlang_names(names)}],
            Old.""")  # fmt: skip
        if not self.made:  # the first batch: note what dead runs left behind
            self.stale = [found[0] for found in _VHOST_NAME.finditer(out)
                          if not _pid_alive(int(found[1]))]  # fmt: skip
        self.made.extend(names)
        self.free.extend(names)

    def close(self) -> None:
        from bench.services import rabbitmqctl

        doomed = self.made + self.stale
        if doomed:
            rabbitmqctl("eval", f"[rabbit_vhost:delete(V, {_ACTING_USER}) "
                                f"|| V <- {_erlang_names(doomed)}].")  # fmt: skip


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def vhost_of(url: str) -> str:
    return urlsplit(url).path.lstrip("/") or "/"


# ---------------------------------------------------------------- a broker that goes away


class TcpGate:
    """A TCP proxy in front of a server, which a test can cut and restore.

    ``cut()`` closes every connection through it and refuses new ones (nothing listens on
    its port); ``restore()`` listens again. ``cut_on_next_connect(down_s)`` waits for the
    next new connection -- in a test, the one a worker opens at the moment it publishes --
    drops it with all the others, and stays down for ``down_s``. ``black_hole()`` accepts
    connections and never answers, as a host that drops packets does.
    """

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.host, self.target_port = host, target_port
        self.port = free_port()
        self.connections: list[socket.socket] = []
        self.cuts = 0
        self._lock = threading.Lock()
        self._armed_down_s: float | None = None
        self._drop_all = True
        self._black_hole = False
        self._tripped = threading.Event()
        self._listener: socket.socket | None = None
        self.restore()

    def url(self, url: str) -> str:
        """``url`` with its host and port replaced by the gate's."""
        parts = urlsplit(url)
        netloc = parts.netloc.rsplit("@", 1)
        hostport = f"{self.host}:{self.port}"
        netloc = f"{netloc[0]}@{hostport}" if len(netloc) == 2 else hostport
        return urlunsplit(parts._replace(netloc=netloc))

    @property
    def is_open(self) -> bool:
        return self._listener is not None

    def restore(self) -> None:
        with self._lock:
            if self._listener is not None:
                return
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            listener.listen(64)
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        self._refuse()
        with self._lock:
            connections, self.connections = self.connections, []
            self.cuts += 1
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def cut_on_next_connect(self, down_s: float, *, drop_all: bool = True) -> threading.Event:
        """Arm the gate; the returned event is set once it has tripped (and is down). With
        ``drop_all=False`` the connections already open live on; only new ones are refused."""
        self._tripped.clear()
        self._drop_all = drop_all
        self._armed_down_s = down_s
        return self._tripped

    def _refuse(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            # shutdown() first: a close() alone leaves a listener that another thread is
            # blocked in accept() on still listening.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()

    def black_hole(self, on: bool = True) -> None:
        self._black_hole = on

    def close(self) -> None:
        self.cut()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut: the listener is closed
            down_s, self._armed_down_s = self._armed_down_s, None
            if down_s is not None:
                client.close()
                if self._drop_all:
                    self.cut()
                else:
                    self._refuse()
                self._tripped.set()
                threading.Timer(down_s, self.restore).start()
                return
            with self._lock:
                self.connections.append(client)
            if self._black_hole:
                continue
            try:
                server = socket.create_connection((self.host, self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)  # the timeout was for the connect; idle is fine
            with self._lock:
                self.connections.append(server)
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    for sock in (source, sink):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
