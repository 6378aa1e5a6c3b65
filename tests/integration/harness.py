"""Real processes for integration tests: `celery -A worker worker` subprocesses and their env.

Each test gets its own PostgreSQL database, its own Redis DB number and key prefix, and
workers started with exactly that environment. Workers are stopped (TERM, then KILL) and
the Redis DB flushed when the test ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
QUEUES = "credits.maintenance,credits.instant,credits.flow"
FAST_RETRIES = {
    "CREDITS_RETRY_BACKOFF_BASE_S": "0.05",
    "CREDITS_RETRY_BACKOFF_MAX_S": "0.5",
    "CREDITS_STUB_LATENCY_MS": "0",
}


def wait_until(check: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@dataclass
class WorkerProcess:
    env: dict[str, str]
    log_path: Path
    name: str
    concurrency: int = 2
    pool: str = "prefork"
    proc: subprocess.Popen | None = None
    extra_args: list[str] = field(default_factory=list)

    def start(self) -> WorkerProcess:
        cmd = [
            sys.executable, "-m", "celery", "-A", "worker", "worker",
            "--loglevel=INFO", "-n", f"{self.name}@%h", "-Q", QUEUES,
            "-c", str(self.concurrency), "-P", self.pool,
            "--without-mingle", "--without-gossip", *self.extra_args,
        ]  # fmt: skip
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        return self

    def wait_ready(self, timeout_s: float = 60.0) -> WorkerProcess:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.name} exited early:\n{self.log_tail()}")
            return b" ready." in self.log_path.read_bytes()

        wait_until(ready, timeout_s, f"worker {self.name} to be ready")
        return self

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
        self._log.close()

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
    """The environment of one test's world: database, Redis DB, prefix, and its workers."""

    database_url: str
    redis_url: str
    key_prefix: str
    tmp_path: Path
    settings_env: dict[str, str] = field(default_factory=dict)
    workers: list[WorkerProcess] = field(default_factory=list)

    def env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITS_")}
        env.update(
            {
                "CREDITS_DATABASE_URL": self.database_url,
                "CREDITS_REDIS_URL": self.redis_url,
                "CREDITS_BROKER_URL": self.redis_url,
                "CREDITS_KEY_PREFIX": self.key_prefix,
                "PYTHONUNBUFFERED": "1",
                **FAST_RETRIES,
                **self.settings_env,
                **overrides,
            }
        )
        return env

    def settings(self, **overrides: Any):
        from shared.config import load_settings

        values = {k.removeprefix("CREDITS_").lower(): v for k, v in self.env().items()
                  if k.startswith("CREDITS_")}  # fmt: skip
        values.update(overrides)
        return load_settings(**values)

    def start_worker(self, name: str = "w1", *, concurrency: int = 2, **env: str):
        worker = WorkerProcess(
            self.env(**env), self.tmp_path / f"{name}.log", name, concurrency=concurrency
        )
        self.workers.append(worker.start())
        return worker.wait_ready()

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {w.name}\n{w.log_tail()}" for w in self.workers)
