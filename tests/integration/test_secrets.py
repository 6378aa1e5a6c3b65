"""No secret and no recipient's address in any output: the logs of a real worker and beat,
Flower's API and pages, ``celery inspect conf``, and the CLI.

A private redis-server with a known password is the broker and the app's Redis; a job goes
to a known street. Then every output a person or a log shipper sees is searched for both.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.factories import ADDRESS, ALL_DELIVERED, as_env, funded_member, note
from tests.helpers import wait_until
from tests.integration.harness import ROOT, CeleryProcess, Stack
from tests.services import free_port, private_redis, wait_for_port

PASSWORD = "S3cret-" + uuid.uuid4().hex[:12]
STREET = "742 Evergreen Terrace"
FLOWER_LOGIN = ("ops", "flower-" + uuid.uuid4().hex[:8])


def http_get(url: str) -> str:
    request = urllib.request.Request(url)
    token = base64.b64encode(":".join(FLOWER_LOGIN).encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode(errors="replace")


def conf_of_workers(api: str) -> str | None:
    """Flower's /api/workers once it holds the workers' configuration."""
    found = http_get(f"{api}/api/workers?refresh=1")
    return found if "redbeat_redis_options" in found else None


def credits(stack: Stack, *args: str) -> str:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "credits"), *args],
        env=stack.env(), capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    return result.stdout + result.stderr


def assert_clean(what: str, text: str) -> None:
    assert PASSWORD not in text, f"the Redis password shows in {what}"
    assert STREET not in text, f"a recipient's street shows in {what}"


def test_no_password_or_address_in_worker_beat_flower_or_cli_output(pg_url, db, tmp_path):
    # given a password-protected Redis as broker and app store, a worker, beat and Flower
    redis_proc, port = private_redis(tmp_path, password=PASSWORD)
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    stack = Stack(pg_url, url, f"sx{uuid.uuid4().hex[:6]}:", tmp_path)
    stack.settings_env.update(as_env(ALL_DELIVERED))
    flower_port = free_port()
    try:
        worker = stack.start_worker("w1")
        beat = stack.start_beat("beat1")
        flower = CeleryProcess(
            stack.env(FLOWER_BASIC_AUTH=":".join(FLOWER_LOGIN)), tmp_path / "flower.log",
            "flower", [sys.executable, "-m", "celery", "-A", "worker", "flower",
                       f"--port={flower_port}", "--address=127.0.0.1"],
        )  # fmt: skip
        stack.workers.append(flower.start())
        wait_for_port(flower_port, 60)
        member = funded_member(db, account_credits=50, member_credits=20).member_id
        # when a job goes to a known street, and its outcome is in
        job = note("secret-1", member, recipient={**ADDRESS, "line1": STREET})
        stack.client().send_action(job)
        wait_until(lambda: stack.final_events(), 60, "the job's outcome")
        wait_until(lambda: "secret-1" in http_get(f"http://127.0.0.1:{flower_port}/api/tasks"),
                   30, "Flower to see the task")  # fmt: skip
        # then nothing anyone reads shows the password or the street
        api = f"http://127.0.0.1:{flower_port}"
        assert_clean("Flower /api/tasks", http_get(f"{api}/api/tasks"))
        # /api/workers carries each worker's configuration, as its page's Config tab does.
        workers = wait_until(lambda: conf_of_workers(api), 60, "Flower to read the conf")
        assert_clean("Flower /api/workers", workers)
        assert_clean("Flower's tasks page", http_get(f"{api}/tasks"))
        inspect = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "worker", "inspect", "conf", "--timeout", "5"],
            env=stack.env(), capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip
        assert "redbeat_redis_options" in inspect.stdout, inspect.stdout[-2000:]
        assert_clean("celery inspect conf", inspect.stdout + inspect.stderr)
        assert_clean("`credits job`", credits(stack, "job", "secret-1"))
        assert_clean("`credits jobs`", credits(stack, "jobs", "--json"))
        assert_clean("`credits dead-letters`", credits(stack, "dead-letters"))
        bad = credits(
            stack, "--database-url", f"postgresql://u:{PASSWORD}@nowhere:1/x", "tree", "1"
        )
        assert "error" in bad
        assert_clean("a configuration error", bad)
        typo = subprocess.run(
            [str(Path(sys.executable).parent / "credits"), "tree", "1"],
            env={**stack.env(), "CREDITS_REDIS_URL": f"redis//:{PASSWORD}@host:6379/0"},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert "CREDITS_REDIS_URL" in typo.stderr
        assert_clean("a configuration error naming CREDITS_REDIS_URL", typo.stdout + typo.stderr)
        stack.stop()
        for process in (worker, beat, flower):
            assert_clean(f"the {process.name} log", process.log_path.read_text(errors="replace"))
    finally:
        stack.stop()
        redis_proc.terminate()
        redis_proc.wait(10)


@pytest.fixture(autouse=True)
def _no_flower_persistence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Flower writes nothing into the repository."""
    monkeypatch.chdir(tmp_path)
