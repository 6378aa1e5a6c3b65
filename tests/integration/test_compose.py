"""docker-compose.yml: resolved as Compose resolves it, checked, and its app services run.

Neither a container engine nor Compose is needed. ``tests.compose`` resolves the file
(YAML, the ``.env`` file, interpolation) and validates it against the Compose
Specification's JSON schema; where ``docker compose`` or ``docker-compose`` is installed,
its own ``config`` must agree (an extra: skipped when neither exists, even under CI).

The app services' own commands then run as local processes against this machine's
PostgreSQL (a fresh database, with the compose file's owner and app roles made unique),
RabbitMQ (a fresh vhost) and a private, password-protected redis-server. Compose
hostnames and users in their environment are rewritten to those.
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
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import pytest
import yaml

from tests.compose import ComposeError, load
from tests.integration.harness import ROOT, CeleryProcess, wait_until
from tests.integration.pg_roles import RoledDatabase, database, roles, run_init_script
from tests.services import free_port, missing, private_redis

COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
VENV_BIN = Path(sys.executable).parent
APP_SERVICES = ("migrate", "worker", "worker-instant", "beat", "flower", "api")
RUNNING_APP_SERVICES = ("worker", "worker-instant", "beat", "flower", "api")
BACKING_SERVICES = ("postgres", "rabbitmq", "redis")
LONG_RUNNING = (*BACKING_SERVICES, *RUNNING_APP_SERVICES)
REQUIRED = (
    "POSTGRES_PASSWORD",
    "POSTGRES_APP_PASSWORD",
    "RABBITMQ_PASSWORD",
    "REDIS_PASSWORD",
    "FLOWER_PASSWORD",
    "JOB_SIGNING_KEY",
)
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}")
# A release, not a moving tag like 7.4 or 3: PostgreSQL numbers its releases major.minor.
RELEASE = {"postgres": r"\d+\.\d+", "rabbitmq": r"\d+\.\d+\.\d+", "redis": r"\d+\.\d+\.\d+"}
AMQP_URL = os.environ.get("CREDITS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672")
INITDB = "/docker-entrypoint-initdb.d"


def fill_env_example(path: Path) -> dict[str, str]:
    """.env.example with each empty password set to a distinct value, as a user would do."""
    lines, values = [], {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#") and name in REQUIRED and not value:
            value = f"{name.lower().replace('_', '')}{uuid.uuid4().hex[:8]}"
            if name == "JOB_SIGNING_KEY":  # '<key id>:<secret of 32+ characters>'
                value = f"k1:{uuid.uuid4().hex}{uuid.uuid4().hex}"
            line = f"{name}={value}"
        if sep and not line.lstrip().startswith("#"):
            values[name] = line.partition("=")[2]
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")
    return values


@pytest.fixture(scope="module")
def env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("compose") / ".env"
    fill_env_example(path)
    return path


@pytest.fixture(scope="module")
def config(env_file: Path) -> dict[str, Any]:
    return load(COMPOSE_FILE, env_file=env_file)


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
        return ["/bin/sh", "-c", rest[0]]
    assert kind == "CMD", test
    return rest


# ---------------------------------------------------------------- the file itself


def test_compose_refuses_to_start_without_an_env_file() -> None:
    with pytest.raises(ComposeError) as caught:
        load(COMPOSE_FILE)
    assert caught.value.variable in REQUIRED
    assert f"required variable {caught.value.variable} is missing a value" in str(caught.value)
    assert "set it in .env" in str(caught.value)


@pytest.mark.parametrize("variable", REQUIRED)
@pytest.mark.parametrize("how", ["empty", "absent"])
def test_each_password_is_required_and_named_when_missing(
    variable: str, how: str, tmp_path: Path
) -> None:
    env_file = tmp_path / ".env"
    fill_env_example(env_file)
    lines = env_file.read_text().splitlines()
    replacement = [f"{variable}="] if how == "empty" else []
    lines = [new for line in lines for new in
             (replacement if line.startswith(f"{variable}=") else [line])]  # fmt: skip
    env_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(ComposeError) as caught:
        load(COMPOSE_FILE, env_file=env_file)
    assert caught.value.variable == variable


def test_an_unedited_copy_of_env_example_is_refused() -> None:
    with pytest.raises(ComposeError) as caught:
        load(COMPOSE_FILE, env_file=ENV_EXAMPLE)
    assert caught.value.variable in REQUIRED


def test_env_example_lists_every_variable_and_no_password_has_a_default(env_file: Path) -> None:
    text = COMPOSE_FILE.read_text()
    uses = VARIABLE.findall(text)
    listed = {
        line.split("=", 1)[0].strip()
        for line in ENV_EXAMPLE.read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    }
    assert {name for name, _ in uses} <= listed, ".env.example misses a variable"
    # Every use of a password is `${NAME:?...}`: required, never defaulted.
    for name, rest in uses:
        if name in REQUIRED:
            assert rest.startswith(":?"), f"${{{name}{rest}}} does not require {name}"
        else:
            assert rest.startswith((":-", "-")), f"${{{name}{rest}}} needs a default"
    assert {name for name, _ in uses} >= set(REQUIRED)
    for path in (COMPOSE_FILE, ENV_EXAMPLE):
        assert "change-me" not in path.read_text().lower(), path.name
    example = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    )
    assert {name: example[name] for name in REQUIRED} == dict.fromkeys(REQUIRED, "")
    # With the passwords filled in, no variable is left without a value or a default.
    unset: set[str] = set()
    load(COMPOSE_FILE, env_file=env_file, unset=unset)
    assert unset == set()


def test_every_image_is_pinned_to_a_release(config: dict[str, Any]) -> None:
    services = config["services"]
    for name in BACKING_SERVICES:
        image = services[name]["image"]
        assert re.fullmatch(rf"{name}:{RELEASE[name]}(-[a-z0-9.-]+)?", image), (
            f"{name}: {image} is not pinned to a release"
        )
    assert services["rabbitmq"]["image"].startswith("rabbitmq:3.")
    # The app's own image is built here, from a Dockerfile whose base is pinned
    # (tests/unit/test_packaging.py).
    for name in APP_SERVICES:
        assert services[name]["build"] == "."
    images = {services[name]["image"] for name in APP_SERVICES}
    assert len(images) == 1, "one image for every app service"


def passwords(config: dict[str, Any]) -> dict[str, str]:
    services = config["services"]
    redis_cmd = argv(services["redis"]["command"])
    postgres = environment(services["postgres"])
    return {
        "postgres": postgres["POSTGRES_PASSWORD"],
        "postgres_app": postgres["POSTGRES_APP_PASSWORD"],
        "rabbitmq": environment(services["rabbitmq"])["RABBITMQ_DEFAULT_PASS"],
        "redis": redis_cmd[redis_cmd.index("--requirepass") + 1],
    }


def test_structure(config: dict[str, Any], env_file: Path) -> None:
    services = config["services"]
    secrets = passwords(config)
    filled = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    assert secrets == {
        "postgres": filled["POSTGRES_PASSWORD"],
        "postgres_app": filled["POSTGRES_APP_PASSWORD"],
        "rabbitmq": filled["RABBITMQ_PASSWORD"],
        "redis": filled["REDIS_PASSWORD"],
    }
    assert len(set(secrets.values())) == len(secrets)

    # Only Flower and the API publish a port, on loopback unless *_BIND says otherwise.
    published = {name for name, spec in services.items() if spec.get("ports")}
    assert published == {"flower", "api"}
    assert services["flower"]["ports"] == ["127.0.0.1:5555:5555"]
    assert services["api"]["ports"] == ["127.0.0.1:8000:8000"]

    # postgres: the owner role, and the init script that makes the app role.
    postgres = environment(services["postgres"])
    owner, app_role = postgres["POSTGRES_USER"], postgres["POSTGRES_APP_USER"]
    assert (owner, app_role, postgres["POSTGRES_DB"]) == ("credits", "credits_app", "credits")
    assert initdb_dir(services["postgres"]).is_dir()
    assert "pg_isready" in argv(services["postgres"]["healthcheck"]["test"])

    # rabbitmq: its own user and password, a durable volume, a fixed node name.
    rabbitmq = services["rabbitmq"]
    assert environment(rabbitmq)["RABBITMQ_DEFAULT_USER"] == "credits"
    assert rabbitmq["hostname"] == "rabbitmq"
    assert any(str(v).endswith(":/var/lib/rabbitmq") for v in rabbitmq["volumes"])
    assert rabbitmq["healthcheck"]["test"] == ["CMD", "rabbitmq-diagnostics", "-q", "ping"]

    # redis: password, noeviction, append-only with an fsync per write.
    redis_cmd = argv(services["redis"]["command"])
    assert redis_cmd[0] == "redis-server"
    for flag, value in (("--maxmemory-policy", "noeviction"), ("--appendonly", "yes"),
                        ("--appendfsync", "always")):  # fmt: skip
        assert redis_cmd[redis_cmd.index(flag) + 1] == value, flag

    # The app services: the app role, RabbitMQ as the broker, Redis for the rest.
    for name in RUNNING_APP_SERVICES:
        env = environment(services[name])
        db = urlsplit(env["CREDITS_DATABASE_URL"])
        assert (db.username, unquote(db.password or ""), db.hostname, db.path) == (
            app_role, secrets["postgres_app"], "postgres", "/credits"
        ), name  # fmt: skip
        broker = urlsplit(env["CREDITS_BROKER_URL"])
        assert (broker.scheme, broker.username, broker.password, broker.hostname, broker.port,
                broker.path) == ("amqp", "credits", secrets["rabbitmq"], "rabbitmq", 5672,
                                 "//"), name  # fmt: skip
        for key, db_number in (("CREDITS_REDIS_URL", "/0"), ("CREDITS_STUB_REDIS_URL", "/1")):
            url = urlsplit(env[key])
            assert (url.hostname, url.port, url.password, url.path) == (
                "redis", 6379, secrets["redis"], db_number
            ), (name, key)  # fmt: skip
        depends = services[name]["depends_on"]
        assert depends == {
            "migrate": {"condition": "service_completed_successfully"},
            "rabbitmq": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
        }, name

    # migrate: the owner role, the database only, and the script the image carries.
    migrate = services["migrate"]
    migrate_env = environment(migrate)
    assert set(migrate_env) == {"CREDITS_DATABASE_URL"}
    db = urlsplit(migrate_env["CREDITS_DATABASE_URL"])
    assert (db.username, db.password, db.hostname) == (owner, secrets["postgres"], "postgres")
    command = argv(migrate["command"])
    assert command == ["sh", "-c", f"credits db upgrade && credits db grant --app-role {app_role}"]
    assert migrate["restart"] == "no"
    assert "healthcheck" not in migrate
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}

    flower = services["flower"]
    user, _, flower_password = environment(flower)["FLOWER_BASIC_AUTH"].partition(":")
    assert user == "admin" and flower_password == filled["FLOWER_PASSWORD"]
    assert environment(flower)["FLOWER_READ_ONLY"] == "true"
    assert "/healthcheck" in " ".join(argv(flower["healthcheck"]["test"]))

    worker = services["worker"]
    assert "container_name" not in worker, "a fixed container name stops --scale worker=N"
    worker_cmd = argv(worker["command"])
    assert worker_cmd[:4] == ["celery", "-A", "worker", "worker"]
    assert "-E" in worker_cmd
    # Every queue the app routes to, in the app's order (the worker drains them in order):
    # a queue left out here piles up in the broker with no one to consume it.
    from shared.queues import QUEUE_NAMES

    assert worker_cmd[worker_cmd.index("-Q") + 1] == ",".join(QUEUE_NAMES)
    # Instant actions and sweeps have workers of their own (RabbitMQ has no queue order).
    instant_cmd = argv(services["worker-instant"]["command"])
    assert instant_cmd[instant_cmd.index("-Q") + 1] == "credits.maintenance,credits.instant"
    assert "instant@$HOSTNAME" in " ".join(argv(services["worker-instant"]["healthcheck"]["test"]))
    assert environment(worker)["CREDITS_METRICS_PORT"] == "9808"
    assert worker["expose"] == ["9808"]  # metrics on the compose network, never published

    beat = services["beat"]
    assert beat["deploy"]["replicas"] == 1
    assert "container_name" not in beat
    assert argv(beat["command"])[:4] == ["celery", "-A", "worker", "beat"]
    assert "-S" not in argv(beat["command"]), "the scheduler comes from the app's settings"

    for name in LONG_RUNNING:
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        assert services[name].get("restart") == "unless-stopped", name
    assert set(config["volumes"]) == {"postgres-data", "rabbitmq-data", "redis-data"}


def initdb_dir(postgres: dict[str, Any]) -> Path:
    """The host directory compose mounts as the postgres image's init-script directory."""
    for volume in postgres["volumes"]:
        source, _, rest = str(volume).partition(":")
        if rest.split(":")[0] == INITDB:
            assert source.startswith("./"), "a bind mount relative to the compose file"
            return COMPOSE_FILE.parent / source
    raise AssertionError(f"postgres mounts nothing on {INITDB}")


# ---------------------------------------------------------------- Compose itself, if present


def compose_command() -> list[str] | None:
    """`docker compose` (v2) or `docker-compose` (v1 or v2), whichever really runs here."""
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for command in candidates:
        try:
            probe = subprocess.run([*command, "version"], capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return command
    return None


def run_compose_config(command: list[str], env_file: Path) -> subprocess.CompletedProcess:
    used = {name for name, _ in VARIABLE.findall(COMPOSE_FILE.read_text())}
    env = {k: v for k, v in os.environ.items() if k not in used}
    return subprocess.run(
        [*command, "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def comparable(service: dict[str, Any]) -> dict[str, Any]:
    """What both resolutions must agree on, in one form (`config` output re-escapes `$`)."""

    def unescape(value: str) -> str:
        return value.replace("$$", "$")

    depends = service.get("depends_on") or {}
    if isinstance(depends, list):
        depends = {name: {"condition": "service_started"} for name in depends}
    test = (service.get("healthcheck") or {}).get("test")
    return {
        "image": service.get("image"),
        "environment": {k: unescape(v) for k, v in environment(service).items()},
        "command": [unescape(a) for a in argv(service.get("command") or [])],
        "depends_on": {name: spec.get("condition") for name, spec in depends.items()},
        "healthcheck": [unescape(str(a)) for a in (test if isinstance(test, list) else [])],
    }


def test_docker_compose_config_agrees_when_compose_is_installed(
    config: dict[str, Any], env_file: Path, tmp_path: Path
) -> None:
    command = compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` runs here (an extra check)")
    result = run_compose_config(command, env_file)
    assert result.returncode == 0, f"{' '.join(command)} config failed:\n{result.stderr}"
    theirs = yaml.safe_load(result.stdout)
    assert set(theirs["services"]) == set(config["services"])
    for name, service in config["services"].items():
        assert comparable(theirs["services"][name]) == comparable(service), name
    # And Compose itself refuses to resolve the file without the passwords.
    empty = tmp_path / "empty.env"
    empty.write_text("")
    refused = run_compose_config(command, empty)
    assert refused.returncode != 0
    assert any(name in refused.stderr for name in REQUIRED), refused.stderr


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


class LocalWorld:
    """Where the compose hostnames, users and paths point to on this machine."""

    def __init__(self, db: RoledDatabase, vhost: str, redis_port: int) -> None:
        self.db = db
        self.vhost = vhost
        self.redis_port = redis_port
        # Compose's role names -> this test's unique roles (roles are cluster-wide).
        self.roles = {"credits": db.owner, "credits_app": db.app}

    def command(self, command: str | list[str]) -> list[str]:
        """The service's command with `celery`, `credits`, `python` and image paths local."""
        args = argv(command)
        local = {"celery": [sys.executable, "-m", "celery"], "python": [sys.executable],
                 "credits": [str(VENV_BIN / "credits")]}  # fmt: skip
        if args[:2] == ["sh", "-c"]:  # a shell line: the same substitutions inside it
            script = re.sub(r"(?<![\w/-])credits ", f"{VENV_BIN / 'credits'} ", args[2])
            for role, local_role in self.roles.items():
                script = re.sub(rf"--app-role {re.escape(role)}(?!\w)", f"--app-role {local_role}",
                                script)  # fmt: skip
            return ["/bin/sh", "-c", script]
        args = [*local.get(args[0], [args[0]]), *args[1:]]
        if "--app-role" in args:
            at = args.index("--app-role") + 1
            args[at] = self.roles[args[at]]
        return args

    def url(self, key: str, value: str) -> str:
        url = urlsplit(value)
        if key == "CREDITS_DATABASE_URL":
            assert url.hostname == "postgres", value
            server = urlsplit(self.db.url(self.db.owner))
            netloc = f"{self.roles[url.username]}:{url.password}@{server.hostname}:{server.port}"
            return urlunsplit((url.scheme, netloc, f"/{self.db.name}", "", ""))
        if key == "CREDITS_BROKER_URL":
            assert url.scheme == "amqp" and url.hostname == "rabbitmq", value
            base = urlsplit(AMQP_URL)  # the machine's RabbitMQ: its own user, our vhost
            return urlunsplit(("amqp", base.netloc, f"/{self.vhost}", "", ""))
        assert url.scheme == "redis" and url.hostname == "redis", value
        netloc = f":{url.password}@127.0.0.1:{self.redis_port}"
        return urlunsplit((url.scheme, netloc, url.path, url.query, url.fragment))

    def env(self, service: dict[str, Any], **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CREDITS_", "FLOWER_"))}
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONUNBUFFERED"] = "1"
        for key, value in environment(service).items():
            if key.startswith("CREDITS_") and key.endswith("_URL"):
                value = self.url(key, value)
            elif key == "CREDITS_METRICS_PORT":
                value = str(free_port())
            env[key] = value
        env.update(extra)
        return env

    def settings(self, service: dict[str, Any]):
        from shared.config import load_settings

        env = self.env(service)
        values = {k.removeprefix("CREDITS_").lower(): v for k, v in env.items()
                  if k.startswith("CREDITS_")}  # fmt: skip
        return load_settings(**values)


def http_get(
    url: str, auth: tuple[str, str] | None = None, data: bytes | None = None
) -> tuple[int, bytes]:
    """GET, or POST when ``data`` is given; the status (0 when nothing answers) and body."""
    request = urllib.request.Request(url, data=data)
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
    from worker.factory import create_app

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


def rabbitmqctl(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("rabbitmqctl")
    if exe is None:
        missing("rabbitmqctl is not installed (it makes a vhost per test)")
    return subprocess.run([exe, "-q", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def rabbitmq_vhost() -> Iterator[str]:
    """A RabbitMQ vhost of this test's own on the machine's broker, deleted afterwards."""
    server = urlsplit(AMQP_URL)
    with closing(socket.socket()) as sock:
        sock.settimeout(3)
        if sock.connect_ex((server.hostname, server.port or 5672)) != 0:
            missing(f"RabbitMQ is not answering at {server.hostname}:{server.port or 5672}")
    name = f"credits_compose_{uuid.uuid4().hex[:12]}"
    created = rabbitmqctl("add_vhost", name)
    if created.returncode != 0:
        missing(f"rabbitmqctl add_vhost failed (run as root?): {created.stderr.strip()}")
    try:
        granted = rabbitmqctl("set_permissions", "-p", name, server.username, ".*", ".*", ".*")
        assert granted.returncode == 0, granted.stderr
        yield name
    finally:
        rabbitmqctl("delete_vhost", name)


def rabbitmq_queues(vhost: str) -> dict[str, tuple[int, int]]:
    """Queue name -> (messages, consumers) in ``vhost``."""
    listed = rabbitmqctl("list_queues", "-p", vhost, "--no-table-headers",
                         "name", "messages", "consumers")  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    queues = {}
    for line in listed.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3:
            queues[parts[0]] = (int(parts[1]), int(parts[2]))
    return queues


@pytest.fixture
def roled_db() -> Iterator[RoledDatabase]:
    with roles("credits_compose") as names, database(names) as db:
        yield db


def delivered_job_id(settings: Any, member_id: int) -> str:
    """A job id the stub vendor, as configured, plans to deliver at the first attempt."""
    from shared.adapters.redis_client import make_redis
    from shared.services.recovery import vendor_key
    from worker.fulfilment.stub import StubProvider, StubRates

    stub = StubProvider(make_redis("memory://plan"), StubRates.from_settings(settings))
    return next(
        job_id
        for job_id in (f"compose-{i}" for i in range(100))
        if stub.planned_outcome(vendor_key(member_id, job_id)) == "delivered"
    )


@pytest.mark.postgres
@pytest.mark.redis
def test_app_services_run_their_own_commands(
    config: dict[str, Any], roled_db: RoledDatabase, rabbitmq_vhost: str, tmp_path: Path
) -> None:
    import redis
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine, inspect, select

    from shared.client import CreditsClient
    from shared.config import normalize_database_url
    from shared.db import Database
    from shared.migrations import alembic_config, current
    from shared.models import Base, Job
    from shared.queues import QUEUE_NAMES
    from shared.services.reconcile import reconcile
    from tests.factories import funded_member, postcard

    services = config["services"]
    secrets = passwords(config)
    redis_proc, redis_port = private_redis(tmp_path, password=secrets["redis"])
    world = LocalWorld(roled_db, rabbitmq_vhost, redis_port)
    started: list[ServiceProcess] = []

    def service(name: str, cmd: list[str] | None = None, **extra: str) -> ServiceProcess:
        proc = ServiceProcess(
            env=world.env(services[name], **extra),
            log_path=tmp_path / f"{name}.log",
            name=name,
            command=cmd or world.command(services[name]["command"]),
            cwd=tmp_path,  # beat's default schedule file lands here, not in the repo
        )
        started.append(proc.start())
        return proc

    try:
        # postgres: its init scripts, with its own environment, make the app role.
        scripts = sorted(initdb_dir(services["postgres"]).iterdir())
        assert [p.suffix for p in scripts] == [".sh"], scripts
        postgres_env = environment(services["postgres"])
        env = roled_db.init_env(postgres_env["POSTGRES_APP_PASSWORD"])
        env["POSTGRES_APP_USER"] = world.roles[postgres_env["POSTGRES_APP_USER"]]
        for script in scripts:
            run_init_script(env, script)

        # The private Redis refuses clients without the compose file's password.
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=redis_port, socket_timeout=3).ping()
        assert redis.Redis(port=redis_port, password=secrets["redis"], socket_timeout=3).ping()

        # migrate: one shot as the owner, exits 0, leaves the schema at the head revision
        # and the app role's grants in place.
        migrate = service("migrate")
        try:
            migrate.proc.wait(180)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"migrate still running after 180s:\n{migrate.tail()}") from None
        assert migrate.proc.returncode == 0, f"migrate failed:\n{migrate.tail()}"
        owner_url = normalize_database_url(roled_db.url(roled_db.owner))
        head = ScriptDirectory.from_config(alembic_config(owner_url)).get_current_head()
        assert current(owner_url) == head
        engine = create_engine(owner_url)
        try:
            tables = set(inspect(engine).get_table_names())
        finally:
            engine.dispose()
        assert set(Base.metadata.tables) <= tables

        # The long-running ones, all at once.
        worker = service("worker")
        beat = service("beat")
        flower_port = free_port()
        flower_cmd = world.command(services["flower"]["command"])
        assert "--port=5555" in flower_cmd
        flower_cmd = [f"--port={flower_port}" if a == "--port=5555" else a for a in flower_cmd]
        flower = service("flower", flower_cmd, FLOWER_ADDRESS="127.0.0.1")

        # worker: ready on RabbitMQ, and its compose healthcheck (inspect ping) passes.
        worker.wait_for_log(" ready.", timeout_s=120)
        assert f"amqp://guest:**@127.0.0.1:5672/{rabbitmq_vhost}" in worker.log()
        hostname = socket.gethostname()
        run_healthcheck(
            "worker", healthcheck_shell(services["worker"]), {**worker.env, "HOSTNAME": hostname}
        )

        # A job from a flow engine, published to RabbitMQ by the producer client, is
        # processed by that worker, connected to PostgreSQL as the app role.
        settings = world.settings(services["worker"])
        assert settings.broker.startswith("amqp://")
        app_db = Database(settings.database_url)
        try:
            tree = funded_member(app_db, account_credits=50, member_credits=10)
            job_id = delivered_job_id(settings, tree.member_id)
            client = CreditsClient(settings=settings)
            try:
                client.send_action(postcard(job_id, tree.member_id))
                outcome = client.events.wait_for(tree.member_id, job_id, "0-0", timeout_s=90)
            finally:
                client.close()
            assert outcome is not None, f"no outcome for {job_id}:\n{worker.tail()}"
            assert (outcome["status"], outcome["available"]) == ("completed", "9"), outcome
            report = reconcile(app_db)
            assert report.ok, report.problems
            assert report.figures["spent"] == 1
        finally:
            app_db.dispose()
        queues = rabbitmq_queues(rabbitmq_vhost)
        for name in QUEUE_NAMES:
            assert queues.get(name, (None, 0))[1] >= 1, f"nobody consumes {name}: {queues}"
        redis_db0 = redis.Redis(port=redis_port, password=secrets["redis"])
        assert not redis_db0.exists("credits.flow"), "the job went through Redis, not RabbitMQ"

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

        # Read-only: even with the login, Flower neither publishes a task nor stops a worker.
        login = (user, flower_password)
        forged = json.dumps({"kwargs": {"job": postcard("via-flower", tree.member_id)}})
        for path in ("/api/task/async-apply/credits.send_action",
                     "/api/task/send-task/credits.send_action",
                     f"/api/worker/shutdown/celery@{hostname}",
                     f"/api/worker/pool/shrink/celery@{hostname}"):  # fmt: skip
            assert http_get(f"{base}{path}", login, forged.encode())[0] == 403, path
        # /metrics is open to anyone who reaches the port (keep it off the public side).
        assert http_get(f"{base}/metrics")[0] == 200
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
        app_db = Database(settings.database_url)
        try:
            with app_db.unit_of_work() as session:
                jobs = set(session.scalars(select(Job.job_id)))
        finally:
            app_db.dispose()
        assert jobs == {job_id}, "a job came in through Flower"
    finally:
        for proc in reversed(started):
            proc.stop()
        redis_proc.terminate()
        try:
            redis_proc.wait(10)
        except subprocess.TimeoutExpired:
            redis_proc.kill()
            redis_proc.wait(10)
