"""Real processes for integration tests: `celery -A worker worker` subprocesses and their env.

Each test gets its own PostgreSQL database, its own Redis DB number and key prefix, a
broker -- that Redis DB, or a RabbitMQ vhost of its own for tests run ``on_both_brokers``
-- and workers started with exactly that environment. Workers are stopped (TERM, then
KILL) and the Redis DB flushed when the test ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.factories import SIGNING_KEY
from tests.helpers import queue_length, wait_until
from tests.services import TcpGate, vhost_of

ROOT = Path(__file__).resolve().parents[2]
BROKERS = ("redis", "amqp")
# The same test with each broker (the ``broker`` fixture of conftest.py), for tests whose
# outcome depends on how the broker delivers, redelivers and confirms.
on_both_brokers = pytest.mark.parametrize("broker", BROKERS, indirect=True)
QUEUES = "credits.maintenance,credits.instant,credits.flow"
FAST_RETRIES = {
    "CREDITS_RETRY_BACKOFF_BASE_S": "0.05",
    "CREDITS_RETRY_BACKOFF_MAX_S": "0.5",
    "CREDITS_STUB_LATENCY_MS": "0",
}
# Recovery clocks short enough that sweeps act within a test, long enough for 2 cores.
FAST_RECOVERY = {
    "CREDITS_VENDOR_TIMEOUT_S": "1",
    "CREDITS_JOB_LOCK_TIMEOUT_S": "3",
    "CREDITS_IN_DOUBT_AFTER_S": "4",
    "CREDITS_STALE_AFTER_S": "8",
    "CREDITS_RESUME_LEASE_S": "2",
    "CREDITS_RESOLVE_EVERY_S": "1",
    "CREDITS_RESUME_EVERY_S": "1",
    "CREDITS_REPUBLISH_EVERY_S": "2",
    "CREDITS_RECONCILE_EVERY_S": "5",
    "CREDITS_TASK_TIME_LIMIT_S": "20",
    "CREDITS_VISIBILITY_TIMEOUT_S": "30",
    "CREDITS_RESTORE_INTERVAL_S": "1",
    # Redis broker: past the visibility timeout (plus its restore scan) and the burst
    # scenario's queue wait (~25 s), so only a message no worker recorded is re-sent.
    "CREDITS_INTAKE_AFTER_S": "45",
    "CREDITS_INTAKE_EVERY_S": "2",
    "CREDITS_STUB_PENDING_S": "1",
    "CREDITS_BEAT_LOCK_TIMEOUT_S": "6",
    "CREDITS_HOLD_TTL_S": "60",
}


def die_with_parent() -> None:
    """In the child: get SIGKILL when the test runner dies, so no worker outlives a run."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def worker_command(name: str, concurrency: int = 2, queues: str = QUEUES,
                   pool: str = "prefork") -> list[str]:  # fmt: skip
    return [
        sys.executable, "-m", "celery", "-A", "worker", "worker", "-P", pool,
        "--loglevel=INFO", "-n", f"{name}@%h", "-Q", queues,
        "-c", str(concurrency), "--without-mingle", "--without-gossip",
    ]  # fmt: skip


def beat_command(log_dir: Path, name: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker", "beat", "--loglevel=DEBUG",
            "-s", str(log_dir / f"{name}-schedule")]  # fmt: skip


@dataclass
class CeleryProcess:
    """A celery worker or beat in a session of its own, logging to a file."""

    env: dict[str, str]
    log_path: Path
    name: str
    command: list[str]
    ready_marker: bytes = b" ready."
    cwd: Path = ROOT
    proc: subprocess.Popen | None = None

    def start(self) -> CeleryProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.command, cwd=self.cwd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=die_with_parent,
        )  # fmt: skip
        return self

    def wait_ready(self, timeout_s: float = 60.0) -> CeleryProcess:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited early:\n{self.log_tail()}")
            return self.ready_marker in self.log_path.read_bytes()

        wait_until(ready, timeout_s, f"{self.name} to be ready")
        return self

    def restart(self) -> CeleryProcess:
        self.kill()
        self._log.close()
        return self.start().wait_ready()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        else:  # the leader is gone; pool children may not be
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()

    def pause(self) -> None:
        """SIGSTOP the whole process group, as a frozen VM or a long GC pause would."""
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the whole process group: parent and pool children die at once."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


@dataclass
class Stack:
    """The environment of one test's world: database, Redis DB, prefix, broker, workers.

    Workers and the test's own producers share one signing key (``tests.factories``), as
    a deployment's producers and workers do. The broker is the Redis DB unless
    ``broker_url`` names another (a RabbitMQ vhost, or a Redis behind a ``TcpGate``).
    """

    database_url: str
    redis_url: str
    key_prefix: str
    tmp_path: Path
    broker_url: str | None = None
    settings_env: dict[str, str] = field(default_factory=dict)
    workers: list[CeleryProcess] = field(default_factory=list)
    closers: list[Callable[[], Any]] = field(default_factory=list)

    def env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITS_")}
        env.update(
            {
                "CREDITS_DATABASE_URL": self.database_url,
                "CREDITS_REDIS_URL": self.redis_url,
                "CREDITS_BROKER_URL": self.broker,
                "CREDITS_KEY_PREFIX": self.key_prefix,
                "CREDITS_JOB_SIGNING_KEY": SIGNING_KEY,
                "PYTHONUNBUFFERED": "1",
                **FAST_RETRIES,
                **self.settings_env,
                **overrides,
            }
        )
        return env

    @property
    def broker(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def broker_is_amqp(self) -> bool:
        return self.settings().broker_is_amqp

    def settings(self, **overrides: Any):
        from shared.config import load_settings

        values = {k.removeprefix("CREDITS_").lower(): v for k, v in self.env().items()
                  if k.startswith("CREDITS_")}  # fmt: skip
        values.update(overrides)
        return load_settings(**values)

    # ------------------------------------------------------------ what tests talk to

    def client(self, **overrides: Any):
        """A producer, signing with the workers' key; closed when the test ends."""
        from shared.client import CreditsClient

        client = CreditsClient(settings=self.settings(**overrides))
        self.closers.append(client.close)
        return client

    def redis(self):
        from shared.adapters.redis_client import make_redis

        return make_redis(self.redis_url)

    def stub(self):
        """The stub vendor as the workers see it: its records, its planned outcomes."""
        from shared.adapters.redis_client import make_redis
        from worker.fulfilment import make_provider

        settings = self.settings()
        return make_provider(settings, make_redis(settings.vendor_store_url))

    def events(self) -> list[dict[str, str]]:
        """Every outcome event on the stream so far, oldest first."""
        from shared.adapters.events import EventStream

        return list(EventStream(self.redis(), self.settings().stream).all())

    def broker_app(self):
        """A bare producer app on the workers' broker and queues, for hand-made messages."""
        from celery import Celery

        from shared.queues import celery_broker_settings

        app = Celery("test-producer", set_as_current=False)
        app.conf.update(**celery_broker_settings(self.settings()), task_serializer="json")
        self.closers.append(app.close)
        return app

    def publish_raw(self, body: bytes, *, content_type: str, queue: str = "credits.flow",
                    headers: dict[str, Any] | None = None) -> None:  # fmt: skip
        """Put bytes on a queue exactly as given, as a buggy or hostile client would."""
        from kombu import Producer

        from shared.queues import queues

        declared = {q.name: q for q in queues(self.settings())}
        app = self.broker_app()
        with app.connection_for_write() as conn:
            Producer(conn).publish(
                body, exchange=declared[queue].exchange, routing_key=queue,
                content_type=content_type, content_encoding="binary", headers=headers or {},
                # Declaring the queues binds them, so the message cannot be dropped unrouted.
                declare=list(declared.values()),
            )  # fmt: skip

    def final_events(self) -> Counter:
        """How many final events the flow engine got, per (member, job_id)."""
        return Counter(
            (int(e["member_id"]), e["job_id"]) for e in self.events() if e["final"] == "1"
        )

    def queue_key(self, queue: str) -> str:
        """The Redis list a queue lives in (broker keys carry the deployment's prefix)."""
        return f"{self.key_prefix}{queue}"

    def broker_redis(self):
        """The Redis that is the broker (Redis brokers only)."""
        from shared.adapters.redis_client import make_redis

        return make_redis(self.broker)

    def gate_broker(self) -> TcpGate:
        """Put the broker behind a gate the test can cut (only the broker: with a Redis
        broker, locks, events and the stub keep their own connections)."""
        gate = TcpGate(urlsplit(self.broker).port or 5672)
        self.closers.append(gate.close)
        self.broker_url = gate.url(self.broker)
        return gate

    def queued(self, queue: str) -> int:
        """Messages waiting in a queue, not yet delivered to any worker."""
        if not self.broker_is_amqp:
            return self.broker_redis().llen(self.queue_key(queue))
        from amqp.exceptions import NotFound

        try:
            return queue_length(self.broker, queue)
        except NotFound:  # nobody declared it yet: nothing was published to it
            return 0

    def broker_idle(self) -> bool:
        """No message queued and none delivered but unacked."""
        from shared.queues import QUEUE_NAMES

        if self.broker_is_amqp:
            # A passive declare counts only ready messages; rabbitmqctl's `messages` adds
            # those delivered and not yet acked (a running task, a countdown held).
            from bench.services import rabbitmqctl

            listed = rabbitmqctl("list_queues", "-p", vhost_of(self.broker), "--no-table-headers",
                                 "name", "messages")  # fmt: skip
            counts = dict(line.split() for line in listed.splitlines() if line.strip())
            return all(counts.get(q, "0") == "0" for q in QUEUE_NAMES)
        redis = self.broker_redis()
        queued = sum(redis.llen(self.queue_key(q)) for q in QUEUE_NAMES)
        return queued == 0 and redis.hlen(self.queue_key("unacked")) == 0

    # ------------------------------------------------------------ processes

    def start_worker(self, name: str = "w1", *, concurrency: int = 2, queues: str = QUEUES,
                     pool: str = "prefork", **env: str):  # fmt: skip
        command = worker_command(name, concurrency, queues, pool)
        worker = CeleryProcess(self.env(**env), self.tmp_path / f"{name}.log", name, command)
        self.workers.append(worker.start())
        return worker.wait_ready()

    def start_beat(self, name: str = "beat1", *, wait: bool = True, **env: str):
        command = beat_command(self.tmp_path, name)
        beat = CeleryProcess(
            self.env(**env), self.tmp_path / f"{name}.log", name, command, b"beat: Starting"
        )
        self.workers.append(beat.start())
        return beat.wait_ready() if wait else beat

    def stop(self) -> None:
        self._supervising = False
        if getattr(self, "_supervisor", None) is not None:
            self._supervisor.join(5)
        for worker in self.workers:
            worker.stop()
        while self.closers:
            self.closers.pop()()

    def supervise(self, every_s: float = 0.5) -> None:
        """Restart any worker or beat that exits, as compose's restart policy would.

        Beat exits on purpose when it cannot renew its Redis lock; a supervisor brings it
        back, and it waits for the lock again.
        """
        import threading

        self._supervising = True
        self.restarts = 0

        def loop() -> None:
            while self._supervising:
                for proc in list(self.workers):
                    if self._supervising and proc.proc is not None and not proc.alive:
                        proc._log.close()
                        proc.start()
                        self.restarts += 1
                time.sleep(every_s)

        self._supervisor = threading.Thread(target=loop, daemon=True)
        self._supervisor.start()

    def logs(self) -> str:
        return "\n".join(f"--- {w.name}\n{w.log_tail()}" for w in self.workers)
