"""Real processes for integration tests: `celery -A worker worker` subprocesses and their env.

Each test gets its own PostgreSQL database, its own Redis DB number and key prefix, and
workers started with exactly that environment. Workers are stopped (TERM, then KILL) and
the Redis DB flushed when the test ends.
"""

from __future__ import annotations

import contextlib
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


def die_with_parent() -> None:
    """In the child: get SIGKILL when the test runner dies, so no worker outlives a run."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def worker_command(name: str, concurrency: int = 2) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "worker", "worker",
        "--loglevel=INFO", "-n", f"{name}@%h", "-Q", QUEUES,
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
    workers: list[CeleryProcess] = field(default_factory=list)

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
        command = worker_command(name, concurrency)
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
