"""docker-compose.yml: parsed by a real compose parser, checked, and its app services run.

There is no container engine here, so the services' own commands (from
``docker-compose config``) run as local processes instead, against a fresh PostgreSQL
database and a private, password-protected redis-server; the compose hostnames in their
environment are rewritten to 127.0.0.1 and the private ports.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml

from tests.integration.harness import ROOT, CeleryProcess, wait_until
from tests.services import (
    create_pg_database,
    drop_pg_database,
    free_port,
    missing,
    pg_url_for,
    private_redis,
)

COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
VENV_BIN = Path(sys.executable).parent
APP_SERVICES = ("migrate", "worker", "beat", "flower", "api")
LONG_RUNNING = ("postgres", "redis", "worker", "beat", "flower", "api")
# Variables that docker-compose.yml reads; none may be required (`${VAR:?...}`).
VARIABLE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)")


def compose_config(tmp_path: Path, env_file: Path | None = None) -> dict[str, Any]:
    """`docker-compose config`: the file as Compose itself resolves it."""
    exe = shutil.which("docker-compose")
    if exe is None:
        missing("docker-compose is not installed (apt-get install docker-compose)")
    if env_file is None:  # prove the file works with no .env at all
        env_file = tmp_path / "empty.env"
        env_file.write_text("")
    used = set(VARIABLE.findall(COMPOSE_FILE.read_text()))
    env = {k: v for k, v in os.environ.items() if k not in used}
    result = subprocess.run(
        [exe, "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return compose_config(tmp_path_factory.mktemp("compose"))


def argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def healthcheck_shell(service: dict[str, Any]) -> list[str]:
    test = service["healthcheck"]["test"]
    if isinstance(test, str):
        return ["/bin/sh", "-c", test]
    kind, *rest = test
    if kind == "CMD-SHELL":
        # Compose keeps `$$` (a literal `$` for the container's shell) in its output.
        return ["/bin/sh", "-c", rest[0].replace("$$", "$")]
    assert kind == "CMD", test
    return rest


# ---------------------------------------------------------------- the file itself


def test_config_works_without_an_env_file(config: dict[str, Any]) -> None:
    assert set(config["services"]) == {"postgres", "redis", *APP_SERVICES}


def test_env_example_lists_every_variable(tmp_path: Path) -> None:
    used = set(VARIABLE.findall(COMPOSE_FILE.read_text()))
    listed = {
        line.split("=", 1)[0].strip()
        for line in ENV_EXAMPLE.read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    }
    assert used <= listed, f".env.example misses {sorted(used - listed)}"
    assert "?" not in "".join(re.findall(r"\$\{[^}]*\}", COMPOSE_FILE.read_text()))
    # .env.example itself is a valid env file whose values flow through.
    example = compose_config(tmp_path, ENV_EXAMPLE)
    flower_env = environment(example["services"]["flower"])
    assert flower_env["FLOWER_BASIC_AUTH"] == "admin:change-me-flower"


def test_structure(config: dict[str, Any]) -> None:
    services = config["services"]

    redis = services["redis"]
    redis_cmd = argv(redis["command"])
    assert redis_cmd[0] == "redis-server"
    password = redis_cmd[redis_cmd.index("--requirepass") + 1]
    assert password
    assert redis_cmd[redis_cmd.index("--maxmemory-policy") + 1] == "noeviction"
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert "ports" not in redis
    assert "ports" not in services["postgres"]
    assert "pg_isready" in " ".join(argv(services["postgres"]["healthcheck"]["test"]))

    for name in ("worker", "beat", "flower", "migrate"):
        env = environment(services[name])
        for key in ("CREDITS_REDIS_URL", "CREDITS_BROKER_URL"):
            url = urlsplit(env[key])
            assert (url.hostname, url.port, url.password) == ("redis", 6379, password), name
        assert urlsplit(env["CREDITS_DATABASE_URL"]).hostname == "postgres", name

    flower = services["flower"]
    user, _, flower_password = environment(flower)["FLOWER_BASIC_AUTH"].partition(":")
    assert user and flower_password
    assert any(str(p.get("target") if isinstance(p, dict) else p).endswith("5555/tcp")
               or "5555" in str(p) for p in flower["ports"])  # fmt: skip
    assert "/healthcheck" in " ".join(argv(flower["healthcheck"]["test"]))

    worker = services["worker"]
    assert "container_name" not in worker, "a fixed container name stops --scale worker=N"
    assert "ports" not in worker, "a published host port stops --scale worker=N"
    worker_cmd = argv(worker["command"])
    assert worker_cmd[:4] == ["celery", "-A", "worker", "worker"]
    assert "-E" in worker_cmd
    assert "-Q" in worker_cmd
    # Every queue the app routes to, in the app's order (the worker drains them in order):
    # a queue left out here piles up in Redis with no one to consume it.
    from shared.client import QUEUES

    assert worker_cmd[worker_cmd.index("-Q") + 1] == ",".join(q.name for q in QUEUES)
    assert environment(worker)["CREDITS_METRICS_PORT"] == "9808"

    beat = services["beat"]
    assert beat["deploy"]["replicas"] == 1
    assert "container_name" not in beat
    assert argv(beat["command"])[:4] == ["celery", "-A", "worker", "beat"]
    assert "-S" not in argv(beat["command"]), "the scheduler comes from the app's settings"

    for name in LONG_RUNNING:
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        assert services[name].get("restart") == "unless-stopped", name

    migrate = services["migrate"]
    assert argv(migrate["command"]) == ["credits", "db", "upgrade"]
    assert migrate["restart"] == "no"
    assert "healthcheck" not in migrate
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"

    for name in ("worker", "beat", "flower"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name

    images = {services[name].get("image") for name in APP_SERVICES}
    assert len(images) == 1 and None not in images, "one image for every app service"


# ---------------------------------------------------------------- the services, run locally


class ServiceProcess(CeleryProcess):
    """A compose service's own command, run locally, with log helpers for the checks."""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def check_alive(self) -> None:
        if not self.alive:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")

    def wait_for_log(self, text: str, timeout_s: float = 60.0) -> None:
        def logged() -> bool:
            if text in self.log():
                return True
            self.check_alive()
            return False

        try:
            wait_until(logged, timeout_s, f"{self.name} to log {text!r}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- {self.name} log:\n{self.tail()}") from None


def local_command(command: str | list[str]) -> list[str]:
    """The service's command, with `celery`/`credits` taken from this virtualenv."""
    args = argv(command)
    if args[0] == "celery":
        return [sys.executable, "-m", "celery", *args[1:]]
    if args[0] == "credits":
        return [str(VENV_BIN / "credits"), *args[1:]]
    return args


def local_env(
    service: dict[str, Any], *, database: str, redis_port: int, **extra: str
) -> dict[str, str]:
    """The service's environment, pointed at this test's PostgreSQL database and Redis."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CREDITS_", "FLOWER_"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    for key, value in environment(service).items():
        if key == "CREDITS_DATABASE_URL":
            # Local PostgreSQL trusts its `postgres` user; the database is the test's own.
            assert urlsplit(value).hostname == "postgres"
            value = pg_url_for(database)
        elif key in ("CREDITS_REDIS_URL", "CREDITS_BROKER_URL"):
            url = urlsplit(value)
            assert url.hostname == "redis", value
            netloc = f":{url.password}@127.0.0.1:{redis_port}"
            value = urlunsplit((url.scheme, netloc, url.path, url.query, url.fragment))
        elif key == "CREDITS_METRICS_PORT":
            value = str(free_port())
        env[key] = value
    env.update(extra)
    return env


def http_get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(":".join(auth).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def run_healthcheck(name: str, cmd: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, (
        f"{name} healthcheck {cmd} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
    )


def scheduled_tasks() -> dict[str, float]:
    """The app's periodic tasks and their intervals in seconds, from its default settings."""
    from shared.config import load_settings
    from worker.app import create_app

    app = create_app(load_settings())
    try:
        schedule = app.conf.beat_schedule or {}
    finally:
        app.close()
    intervals = {}
    for entry in schedule.values():
        every = entry["schedule"]
        seconds = every if isinstance(every, int | float) else every.total_seconds()
        intervals[entry["task"]] = float(seconds)
    return intervals


@pytest.fixture
def pg_database() -> Iterator[str]:
    name = create_pg_database(prefix="credits_compose")
    try:
        yield name
    finally:
        drop_pg_database(name)


@pytest.mark.postgres
@pytest.mark.redis
def test_app_services_run_their_own_commands(
    config: dict[str, Any], pg_database: str, tmp_path: Path
) -> None:
    import redis
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine, inspect

    from shared.config import normalize_database_url
    from shared.migrations import alembic_config, current
    from shared.models import Base

    services = config["services"]
    redis_cmd = argv(services["redis"]["command"])
    password = redis_cmd[redis_cmd.index("--requirepass") + 1]
    redis_proc, redis_port = private_redis(tmp_path, password=password)
    started: list[ServiceProcess] = []

    def service(name: str, cmd: list[str] | None = None, **extra: str) -> ServiceProcess:
        spec = services[name]
        proc = ServiceProcess(
            env=local_env(spec, database=pg_database, redis_port=redis_port, **extra),
            log_path=tmp_path / f"{name}.log",
            name=name,
            command=cmd or local_command(spec["command"]),
            cwd=tmp_path,  # beat's default schedule file lands here, not in the repo
        )
        started.append(proc.start())
        return proc

    try:
        # The private Redis refuses clients without the compose file's password.
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=redis_port, socket_timeout=3).ping()
        assert redis.Redis(port=redis_port, password=password, socket_timeout=3).ping()

        # migrate: one shot, exits 0, leaves the schema at the head revision.
        migrate = service("migrate")
        try:
            migrate.proc.wait(120)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"migrate still running after 120s:\n{migrate.tail()}") from None
        assert migrate.proc.returncode == 0, f"migrate failed:\n{migrate.tail()}"
        db_url = normalize_database_url(pg_url_for(pg_database))
        head = ScriptDirectory.from_config(alembic_config(db_url)).get_current_head()
        assert current(db_url) == head
        engine = create_engine(db_url)
        try:
            tables = set(inspect(engine).get_table_names())
        finally:
            engine.dispose()
        assert set(Base.metadata.tables) <= tables

        # The long-running ones, all at once.
        worker = service("worker")
        beat = service("beat")
        flower_port = free_port()
        flower_cmd = local_command(services["flower"]["command"])
        assert "--port=5555" in flower_cmd
        flower_cmd = [f"--port={flower_port}" if a == "--port=5555" else a for a in flower_cmd]
        flower = service("flower", flower_cmd, FLOWER_ADDRESS="127.0.0.1")

        # worker: ready, and its compose healthcheck (inspect ping to celery@$HOSTNAME) passes.
        worker.wait_for_log(" ready.", timeout_s=90)
        hostname = socket.gethostname()
        run_healthcheck(
            "worker", healthcheck_shell(services["worker"]), {**worker.env, "HOSTNAME": hostname}
        )

        # beat: starts and stays up.
        beat.wait_for_log("beat: Starting", timeout_s=60)
        time.sleep(4)
        beat.check_alive()
        assert "ERROR" not in beat.log(), beat.tail()
        beat_check = [
            a.replace("/proc/1/", f"/proc/{beat.proc.pid}/")
            for a in healthcheck_shell(services["beat"])
        ]
        run_healthcheck("beat", beat_check, beat.env)

        # flower: /healthcheck is open, the API needs the basic-auth credentials.
        base = f"http://127.0.0.1:{flower_port}"

        def healthy() -> bool:
            flower.check_alive()
            return http_get(f"{base}/healthcheck")[0] == 200

        wait_until(healthy, 60, "flower /healthcheck to answer 200")
        user, _, flower_password = environment(services["flower"])["FLOWER_BASIC_AUTH"].partition(
            ":"
        )
        assert http_get(f"{base}/api/workers")[0] == 401
        assert http_get(f"{base}/api/workers", (user, "wrong"))[0] == 401

        # With the credentials: 200, and Flower sees the worker through the broker (its
        # inspect waits 1 s for replies, so a busy machine may need another round).
        def worker_listed() -> bool:
            status, body = http_get(f"{base}/api/workers?refresh=1", (user, flower_password))
            assert status == 200, body
            return f"celery@{hostname}" in json.loads(body)

        wait_until(worker_listed, 30, "flower /api/workers to list the worker", every_s=1)
        flower_check = [
            a.replace("localhost:5555", f"127.0.0.1:{flower_port}")
            for a in healthcheck_shell(services["flower"])
        ]
        if flower_check[0] == "python":
            flower_check[0] = sys.executable
        run_healthcheck("flower", flower_check, flower.env)

        # beat -> broker -> worker: the first periodic task beat sends reaches the worker
        # through the queues on the worker's command line.
        schedule = scheduled_tasks()
        if schedule:
            first = min(schedule, key=schedule.get)

            def received() -> bool:
                worker.check_alive()
                beat.check_alive()
                return f"Task {first}[" in worker.log()

            try:
                wait_until(received, schedule[first] + 30, f"the worker to receive {first}")
            except AssertionError as exc:
                raise AssertionError(
                    f"{exc}\n--- beat:\n{beat.tail()}\n--- worker:\n{worker.tail()}"
                ) from None

        for proc in (worker, beat, flower):
            proc.check_alive()
    finally:
        for proc in reversed(started):
            proc.stop()
        redis_proc.terminate()
        try:
            redis_proc.wait(10)
        except subprocess.TimeoutExpired:
            redis_proc.kill()
            redis_proc.wait(10)
