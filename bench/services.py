"""The servers one run needs, each private to it and removed afterwards.

- two ``redis-server`` processes on free ports: the app's (locks, events, and the broker
  when it is Redis), configured like the compose stack's, so that ``INFO commandstats``
  counts only this run; and the stub vendor's, whose commands are reported apart;
- a fresh PostgreSQL database on the machine's server, dropped at the end;
- a fresh RabbitMQ vhost on the machine's broker, deleted at the end;
- or, for runs that restart or kill the broker (``tests.chaos``), a RabbitMQ node of the
  run's own on free ports, its data in the run's directory.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis

from entrypoints.processes import stop_group

PG_ADMIN_URL = os.environ.get(
    "CREDITS_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
AMQP_URL = os.environ.get("CREDITS_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672")
# PostgreSQL 15 flushes a backend's statistics at most once a second while it works, and
# 10 s after it went idle (PGSTAT_IDLE_INTERVAL): counters are exact only after that.
PG_STATS_IDLE_FLUSH_S = 10.0
PG_COUNTERS = ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_deleted",
               "tup_returned", "tup_fetched")  # fmt: skip


CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (from /proc; gone ones count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Any, timeout_s: float, what: str, every_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = check()
        except Exception:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(every_s)


class CountingRedis(redis.Redis):
    """A client that counts the commands it sends, so the bench can subtract its own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: Counter[str] = Counter()

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.sent[str(args[0]).lower()] += 1
        return super().execute_command(*args, **options)


@dataclass
class RedisServer:
    """A redis-server of this run's own. ``durable`` mirrors the compose stack's Redis
    (append-only file, noeviction); the vendor's store needs neither."""

    name: str
    workdir: Path
    durable: bool = True
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        data = self.workdir / self.name
        data.mkdir(parents=True, exist_ok=True)
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                   "--dir", str(data), "--save", "", "--maxmemory-policy", "noeviction",
                   "--appendonly", "yes" if self.durable else "no",
                   "--logfile", str(data / "redis.log")]  # fmt: skip
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, start_new_session=True)
        self.client = CountingRedis.from_url(self.url)
        wait_for(self.client.ping, 10, f"redis-server {self.name} on port {self.port}")
        return self

    def commandstats(self) -> Counter[str]:
        """Calls per command since start (commands run by Lua scripts included, as Redis
        counts them), less this process's own calls: its INFO and probes."""
        stats = self.client.info("commandstats")
        calls = Counter({name.removeprefix("cmdstat_"): v["calls"] for name, v in stats.items()})
        calls.subtract(self.client.sent)
        calls.pop("info", None)
        return +calls

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def kill(self) -> None:
        """``kill -9``: what reached the append-only file's page cache survives it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class Postgres:
    """A database of this run's own on the machine's PostgreSQL."""

    admin_url: str = PG_ADMIN_URL
    name: str = field(default_factory=lambda: f"credits_bench_{uuid.uuid4().hex[:8]}")

    @property
    def url(self) -> str:
        return f"{self.admin_url.rsplit('/', 1)[0]}/{self.name}"

    def create(self) -> Postgres:
        # The admin connection lives in the admin database: its own queries never count
        # in the bench database's statistics.
        self.admin = psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5)
        self.admin.execute(f'CREATE DATABASE "{self.name}"')
        return self

    def counters(self) -> dict[str, int]:
        self.admin.execute("SELECT pg_stat_clear_snapshot()")
        row = self.admin.execute(
            f"SELECT {', '.join(PG_COUNTERS)} FROM pg_stat_database WHERE datname = %s",
            (self.name,),
        ).fetchone()
        return dict(zip(PG_COUNTERS, row, strict=True))

    def backends(self) -> list[int]:
        """The server processes of the bench database's connections."""
        rows = self.admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.name,)
        ).fetchall()
        return [pid for (pid,) in rows]

    def settle(self) -> float:
        """Wait until every backend of the bench database has flushed its statistics (it
        does 10 s after going idle); returns the seconds waited (0 when nothing ran)."""
        started = time.monotonic()
        query = """
            SELECT coalesce(bool_and(state = 'idle' AND state_change < now() - %s::interval),
                            true)
            FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()
        """
        interval = f"{PG_STATS_IDLE_FLUSH_S + 0.5} seconds"
        wait_for(lambda: self.admin.execute(query, (interval, self.name)).fetchone()[0],
                 120, "PostgreSQL statistics to settle", every_s=0.25)  # fmt: skip
        return time.monotonic() - started

    def version(self) -> str:
        return self.admin.execute("SHOW server_version").fetchone()[0]

    def drop(self) -> None:
        self.admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self.admin.close()


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr.strip() or done.stdout}")
    return done.stdout


@dataclass
class RabbitVhost:
    """A vhost of this run's own on the machine's RabbitMQ, for guest."""

    base_url: str = AMQP_URL
    name: str = field(default_factory=lambda: f"credits-bench-{uuid.uuid4().hex[:8]}")

    @property
    def url(self) -> str:
        return f"{self.base_url}/{self.name}"

    def create(self) -> RabbitVhost:
        rabbitmqctl("add_vhost", self.name)
        user = self.base_url.split("//", 1)[1].split(":", 1)[0]
        rabbitmqctl("set_permissions", "-p", self.name, user, ".*", ".*", ".*")
        return self

    def delete(self) -> None:
        rabbitmqctl("delete_vhost", self.name)


# The scripts themselves: /usr/sbin's wrappers switch to the rabbitmq user, whose HOME and
# cookie are the machine's node's; a private node runs as us with HOME in its directory.
RABBIT_BIN = Path(os.environ.get("CREDITS_BENCH_RABBIT_BIN", "/usr/lib/rabbitmq/bin"))


@dataclass
class RabbitServer:
    """A ``rabbitmq-server`` node of this run's own on free ports, in its own process group,
    with its data (mnesia, logs, cookie) under ``workdir``: the run may stop, restart or
    ``kill -9`` it without touching the machine's broker. A restart keeps the ports and the
    data, so durable queues and persistent messages come back with it."""

    workdir: Path
    port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def node(self) -> str:
        return f"chaos{self.port}@localhost"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    @property
    def home(self) -> Path:
        return self.workdir / f"rabbit-{self.port}"

    def env(self) -> dict[str, str]:
        # Its own files, so that nothing of the machine's node's /etc/rabbitmq applies
        # (its listener on 5672 above all).
        names = ("enabled_plugins", "rabbitmq.conf", "rabbitmq-env.conf")
        plugins, conf, env_conf = (self.home / name for name in names)
        if not plugins.exists():
            self.home.mkdir(parents=True, exist_ok=True)
            plugins.write_text("[].\n")
            conf.write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
            env_conf.write_text("")
        return {**os.environ, "HOME": str(self.home), "RABBITMQ_NODENAME": self.node,
                "RABBITMQ_CONFIG_FILE": str(conf), "RABBITMQ_CONF_ENV_FILE": str(env_conf),
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1", "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "RABBITMQ_MNESIA_BASE": str(self.home / "mnesia"),
                "RABBITMQ_LOG_BASE": str(self.home / "log"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins)}  # fmt: skip

    def ctl(self, *args: str, timeout_s: float = 60) -> str:
        done = subprocess.run([str(RABBIT_BIN / "rabbitmqctl"), "-q", "-n", self.node, *args],
                              capture_output=True, text=True, timeout=timeout_s, env=self.env(),
                              check=False)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def start(self, timeout_s: float = 120) -> RabbitServer:
        log = open(self.home.parent / f"rabbit-{self.port}.out", "ab")  # noqa: SIM115
        with log:
            self.proc = subprocess.Popen([str(RABBIT_BIN / "rabbitmq-server")], env=self.env(),
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # fmt: skip

        deadline = time.monotonic() + timeout_s
        while not self.listening():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                stop_group(self.proc, 10)
                raise RuntimeError(f"RabbitMQ node {self.node} did not start; see {log.name}")
            time.sleep(0.2)
        self.ctl("await_startup", "--timeout", str(int(timeout_s)), timeout_s=timeout_s + 10)
        return self

    def listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        """A clean shutdown (what a restart of the service does)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.ctl("stop")  # else stop_group ends it below
        stop_group(self.proc, 30)
        wait_for(lambda: not self.listening(), 30, f"{self.node} to stop", every_s=0.1)

    def kill(self) -> None:
        """``kill -9`` of the node's whole process group: no shutdown at all."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            # The script is the group's leader; the VM it started may take a moment longer.
            wait_for(lambda: not self.listening(), 30, f"{self.node} to die", every_s=0.1)


def rabbitmq_version() -> str | None:
    if shutil.which("rabbitmqctl") is None:
        return None
    try:
        out = rabbitmqctl("status")
    except (RuntimeError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"RabbitMQ version: (\S+)", out)
    return found[1] if found else None


def machine_facts(pg: Postgres) -> dict[str, Any]:
    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True,
                                   text=True, check=False).stdout.split()  # fmt: skip
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "postgresql": pg.version(),
        "redis": next((w.split("=", 1)[1] for w in redis_version if w.startswith("v=")), None),
        "rabbitmq": rabbitmq_version(),
        "celery": _version("celery"),
        "kombu": _version("kombu"),
    }


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None
