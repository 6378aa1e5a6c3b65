"""The processes of one chaos scenario: private servers (bench's ``Stack``, with a RabbitMQ
node of its own when the broker is RabbitMQ), two workers and one beat started with the
production commands, and a supervisor that restarts whatever exited, as compose's restart
policy does, counting the exits the test did not cause."""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.services import RabbitServer
from bench.stack import Stack, settings_from
from shared.config import Settings
from tests.integration.harness import (
    FAST_RECOVERY,
    FAST_RETRIES,
    CeleryProcess,
    beat_command,
    worker_command,
)

SUPERVISE_EVERY_S = 0.5


class ChaosStack(Stack):
    """bench's stack, but an amqp run's broker is a node of its own, which the scenarios
    may stop, restart and ``kill -9``; the machine's RabbitMQ is never touched."""

    def amqp_broker(self) -> str:
        self.rabbit = RabbitServer(self.workdir).start()
        self._exit.callback(self.rabbit.stop)
        return self.rabbit.url


@dataclass
class Exit:
    name: str
    code: int | None
    caused: bool  # by the test's own SIGKILL
    at: float
    log_tail: str = ""


@dataclass
class Supervised:
    """A worker or beat process; ``expect_exit`` is set before the test kills it."""

    proc: CeleryProcess
    role: str  # "worker" or "beat"
    expected_exits: int = 0
    held: bool = False  # the test stopped it (SIGSTOP): not an exit, but remembered
    exits: list[Exit] = field(default_factory=list)


class World:
    """One scenario's world for one broker: use as a context manager."""

    def __init__(self, broker: str, workdir: Path, env: dict[str, str], *, log=print) -> None:
        self.broker, self.workdir, self.log = broker, workdir, log
        self.overrides = {**FAST_RETRIES, **FAST_RECOVERY, **env}
        self.stack = ChaosStack(broker, workdir, log=log)
        self.procs: dict[str, Supervised] = {}
        self._supervising = False
        self._lock = threading.Lock()

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> World:
        self.stack.__enter__()
        try:
            self.settings: Settings = settings_from(self.stack.env(**self.overrides))
            for name in ("w1", "w2"):
                self._add(name, "worker", worker_command(name, 2), b" ready.")
            self._add("beat", "beat", beat_command(self.workdir, "beat"), b"beat: Starting")
            for item in self.procs.values():
                item.proc.wait_ready(120)
            self._supervisor = threading.Thread(target=self._supervise, daemon=True)
            self._supervising = True
            self._supervisor.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._supervising = False
        if getattr(self, "_supervisor", None) is not None:
            self._supervisor.join(5)
        for item in self.procs.values():
            if item.held:
                self.resume(item.proc.name)
            if item.proc.proc is not None:
                item.proc.stop()
        self.stack.__exit__(None, None, None)

    def _add(self, name: str, role: str, command: list[str], marker: bytes) -> None:
        env = self.stack.env(**self.overrides)
        proc = CeleryProcess(env, self.workdir / f"{name}.log", name, command, marker)
        self.procs[name] = Supervised(proc.start(), role)

    def _supervise(self) -> None:
        while self._supervising:
            with self._lock:
                for item in self.procs.values():
                    proc = item.proc
                    if not self._supervising or proc.proc is None or proc.alive:
                        continue
                    caused = item.expected_exits > 0
                    item.expected_exits -= caused
                    code = proc.proc.returncode
                    tail = "" if caused else proc.log_tail(30)
                    item.exits.append(Exit(proc.name, code, caused, time.time(), tail))
                    if not caused:  # beat does, on purpose, when Redis is away
                        self.log(f"    {proc.name} exited on its own (code {code}); restarted")
                    proc.stop()  # closes its log, kills any pool child left behind
                    proc.start()
            time.sleep(SUPERVISE_EVERY_S)

    # ------------------------------------------------------------ faults

    def kill(self, name: str) -> None:
        """SIGKILL a worker's whole process group (parent and pool children); the
        supervisor restarts it."""
        with self._lock:
            item = self.procs[name]
            item.expected_exits += 1
            os.killpg(item.proc.proc.pid, signal.SIGKILL)

    def pause(self, name: str) -> None:
        item = self.procs[name]
        item.held = True
        os.killpg(item.proc.proc.pid, signal.SIGSTOP)

    def resume(self, name: str) -> None:
        item = self.procs[name]
        os.killpg(item.proc.proc.pid, signal.SIGCONT)
        item.held = False

    def broker_down(self, *, hard: bool) -> None:
        """Stop the broker (``hard``: ``kill -9``); ``broker_up`` starts it again on the
        same port with the same data."""
        if self.broker == "amqp":
            (self.stack.rabbit.kill if hard else self.stack.rabbit.stop)()
        else:
            (self.stack.app_redis.kill if hard else self.stack.app_redis.stop)()

    def broker_up(self) -> None:
        (self.stack.rabbit if self.broker == "amqp" else self.stack.app_redis).start()

    def terminate_pg_backends(self) -> int:
        """``pg_terminate_backend`` on every connection to the run's database."""
        rows = self.stack.pg.admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (self.stack.pg.name,),
        ).fetchall()
        return sum(1 for (done,) in rows if done)

    # ------------------------------------------------------------ what happened

    def exits(self) -> dict[str, Any]:
        items = self.procs.values()
        workers = [e for i in items if i.role == "worker" for e in i.exits]
        beats = [e for i in items if i.role == "beat" for e in i.exits]
        return {
            "worker_exits_caused": sum(e.caused for e in workers),
            "worker_exits_not_caused": sum(not e.caused for e in workers),
            "beat_exits": len(beats),
            "details": [
                {"name": e.name, "code": e.code, "caused": e.caused, "log_tail": e.log_tail}
                for e in workers + beats
                if not e.caused
            ],
        }
