"""Real worker processes, started with the production command, and the broker's side of
them: pausing and resuming consumption, and how many messages are still to do."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import Celery

from bench.services import wait_for
from entrypoints.processes import stop_group
from shared.config import Settings
from shared.queues import FLOW_QUEUE, QUEUE_NAMES, celery_broker_settings

ROOT = Path(__file__).resolve().parents[1]
CELERY = str(Path(sys.executable).with_name("celery"))
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Pool:
    kind: str = "prefork"
    concurrency: int = 2

    @property
    def label(self) -> str:
        return f"-P {self.kind} -c {self.concurrency}"


def control_app(settings: Settings) -> Celery:
    """A Celery app on the run's broker for what the bench itself sends: the no-op task by
    name, and remote control (ping, pause, resume, inspect)."""
    app = Celery("bench", set_as_current=False)
    app.conf.update(**celery_broker_settings(settings), task_serializer="json",
                    accept_content=["json"])  # fmt: skip
    return app


def _die_with_parent() -> None:
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Worker:
    """``celery -A worker worker`` as production runs it, with the run's CREDITS_* env."""

    def __init__(self, env: dict[str, str], pool: Pool, app: Celery, log_dir: Path) -> None:
        self.env, self.pool, self.app = env, pool, app
        tag = uuid.uuid4().hex[:6]
        self.node = f"bench-{pool.kind}-{pool.concurrency}-{tag}@{socket.gethostname()}"
        self.log_path = log_dir / f"worker-{pool.kind}-{pool.concurrency}-{tag}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def command(self) -> list[str]:
        return [CELERY, "-A", "worker", "worker", "-P", self.pool.kind,
                "-c", str(self.pool.concurrency), "-Q", ",".join(QUEUE_NAMES),
                "--without-mingle", "--without-gossip", "-l", "WARNING",
                "-n", self.node.split("@")[0] + "@%h"]  # fmt: skip

    @property
    def display(self) -> str:
        """The command as a person types it (without the bench's node name)."""
        return " ".join(["celery", *self.command[1:-2]])

    def start(self, timeout_s: float = 90) -> Worker:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.command, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent,
        )  # fmt: skip

        def answers() -> bool:
            if self.proc.poll() is not None:
                raise SystemExit(f"worker {self.pool.label} exited:\n{self.log_tail()}")
            return bool(self.app.control.ping(destination=[self.node], timeout=0.5))

        wait_for(answers, timeout_s, f"worker {self.pool.label} to answer a ping")
        return self

    def _control(self, command: str) -> None:
        replies = getattr(self.app.control, command)(
            FLOW_QUEUE, destination=[self.node], reply=True, timeout=5
        )
        if not replies:
            raise RuntimeError(f"worker {self.node} did not answer {command}")

    def pause(self) -> None:
        """Stop taking messages from the flow queue (the one every run publishes to).

        The worker answers a cancel before it acts on it (the green pools' loop can take
        seconds to), so wait until it no longer lists the queue. With Redis, a BRPOP
        already under way can still take one message (a drain times the rest)."""
        self._control("cancel_consumer")
        wait_for(lambda: not self.consuming(), 30, f"{self.node} to stop consuming")

    def resume(self) -> None:
        self._control("add_consumer")

    def _inspect(self) -> Any:
        return self.app.control.inspect(destination=[self.node], timeout=1, limit=1)

    def consuming(self) -> bool:
        replies = self._inspect().active_queues() or {}
        return any(q["name"] == FLOW_QUEUE for queues in replies.values() for q in queues)

    def busy(self) -> int:
        """Tasks the worker holds: running, prefetched or waiting for a countdown."""
        inspect = self._inspect()
        held = 0
        for method in ("active", "reserved", "scheduled"):
            held += sum(len(v) for v in (getattr(inspect, method)() or {}).values())
        return held

    def pids(self) -> list[int]:
        """The worker's process tree: the main process and its pool children."""
        found, todo = [], [self.proc.pid] if self.proc else []
        while todo:
            pid = todo.pop()
            found.append(pid)
            with contextlib.suppress(OSError):
                for task in Path(f"/proc/{pid}/task").iterdir():
                    todo.extend(int(c) for c in (task / "children").read_text().split())
        return found

    def memory(self) -> dict[str, int]:
        """RSS summed over the process tree (shared pages count once per process), and PSS
        (shared pages split between the processes that share them), in bytes."""
        rss = pss = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                rss += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        return {"rss": rss, "pss": pss, "processes": len(self.pids())}

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 30) -> None:
        if self.proc is None:
            return
        stop_group(self.proc, timeout_s)
        self._log.close()
        self.proc = None


class RedisQueue:
    """The flow queue on a Redis broker: messages waiting, and taken but not acked."""

    def __init__(self, client: Any, settings: Settings) -> None:
        self.client = client
        self.queue = f"{settings.key_prefix}{FLOW_QUEUE}"
        self.unacked = f"{settings.key_prefix}unacked"

    def waiting(self) -> int:
        return self.client.llen(self.queue)

    def pending(self, worker: Worker) -> int:
        return self.client.llen(self.queue) + self.client.hlen(self.unacked)


class AmqpQueue:
    """The flow queue on RabbitMQ: messages ready; those the worker holds are unacked, which
    a passive declare does not show, so the worker is asked once the queue is empty."""

    def __init__(self, app: Celery) -> None:
        self.conn = app.connection_for_write()
        self.channel = self.conn.channel()

    def waiting(self) -> int:
        return self.channel.queue_declare(FLOW_QUEUE, passive=True).message_count

    def pending(self, worker: Worker) -> int:
        return self.waiting() or worker.busy()
