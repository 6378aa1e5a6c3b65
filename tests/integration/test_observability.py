"""Flower, the worker's Prometheus metrics, and structured logs, against a real worker."""

from __future__ import annotations

import base64
import json
import sys
import urllib.error
import urllib.request

from tests.factories import ALL_DELIVERED, as_env, funded_member, job_counts, note, postcard
from tests.helpers import wait_until
from tests.integration.harness import CeleryProcess
from tests.services import free_port

AUTH = ("ops", "s3cret-pass")


def get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def sample(metrics: str, name: str) -> float:
    """Sum of a metric's samples whose line starts with ``name`` (labels included)."""
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def start_flower(stack, port: int) -> CeleryProcess:
    command = [sys.executable, "-m", "celery", "-A", "worker", "flower", f"--port={port}",
               "--address=127.0.0.1", f"--basic-auth={AUTH[0]}:{AUTH[1]}"]  # fmt: skip
    flower = CeleryProcess(stack.env(), stack.tmp_path / "flower.log", "flower", command, b"")
    stack.workers.append(flower.start())
    wait_until(lambda: get(f"http://127.0.0.1:{port}/healthcheck")[0] == 200, 60, "flower up")
    return flower


def test_flower_sees_our_worker_and_send_action_tasks(stack, db):
    stack.settings_env.update(as_env(ALL_DELIVERED))
    tree = funded_member(db, account_credits=50, member_credits=40)
    port = free_port()
    start_flower(stack, port)
    stack.start_worker("obs1")
    client = stack.client()
    for i in range(5):
        client.send_action(postcard(f"f-{i}", tree.member_id))
    wait_until(lambda: job_counts(db)["completed"] == 5, 60, "five postcards")
    base = f"http://127.0.0.1:{port}"

    assert get(f"{base}/api/workers")[0] == 401  # basic auth is on
    assert get(f"{base}/api/workers", ("ops", "wrong"))[0] == 401

    def workers() -> dict:
        status, body = get(f"{base}/api/workers?refresh=1", AUTH)
        return json.loads(body) if status == 200 else {}

    found = wait_until(lambda: [w for w in workers() if w.startswith("obs1@")], 30, "our worker")
    assert found

    def tasks() -> dict:
        status, body = get(f"{base}/api/tasks", AUTH)
        return json.loads(body) if status == 200 else {}

    def succeeded() -> list:
        ours = [t for t in tasks().values() if t.get("name") == "credits.send_action"]
        return [t for t in ours if t.get("state") == "SUCCESS"]

    seen = wait_until(succeeded, 30, "send_action tasks in flower")
    assert len(seen) == 5
    status, metrics = get(f"{base}/metrics")
    assert status == 200
    assert 'flower_events_total{task="credits.send_action"' in metrics.replace(", ", ",") or (
        "credits.send_action" in metrics
    )
    assert "flower_worker_online" in metrics


def test_worker_metrics_and_json_logs_describe_the_pipeline(stack, db):
    stack.settings_env.update(
        as_env(ALL_DELIVERED) | {"CREDITS_LOG_FORMAT": "json",
                                 "CREDITS_METRICS_PORT": str(free_port())}
    )  # fmt: skip
    port = int(stack.settings_env["CREDITS_METRICS_PORT"])
    tree = funded_member(db, account_credits=50, member_credits=12)
    worker = stack.start_worker("m1")
    client = stack.client()
    for i in range(3):  # two fit in 12 credits, the third parks
        client.send_action(note(f"n-{i}", tree.member_id))
    wait_until(lambda: job_counts(db)["completed"] == 2 and job_counts(db)["awaiting_credits"] == 1,
               60, "two notes sent and one parked")  # fmt: skip

    def scrape() -> str:
        status, body = get(f"http://127.0.0.1:{port}/metrics")
        return body if status == 200 and "credits_jobs_total" in body else ""

    metrics = wait_until(scrape, 30, "worker metrics")
    assert sample(metrics, 'credits_jobs_total{status="completed"}') == 2
    assert sample(metrics, "credits_jobs_parked_total") == 1
    assert sample(metrics, 'credits_credits_total{movement="held"}') == 10
    assert sample(metrics, 'credits_credits_total{movement="captured"}') == 10
    assert sample(metrics, "credits_jobs_awaiting_credits") == 1
    assert sample(metrics, "credits_open_holds") == 0
    assert sample(metrics, "credits_vendor_latency_seconds_count") == 2
    assert sample(metrics, 'credits_lock_wait_seconds_count{lock="member"}') == 3
    assert "credits_oldest_open_hold_age_seconds" in metrics
    assert "credits_reconcile_drift" in metrics

    # and the JSON log has one line per outcome, each naming the job, its member and cost
    lines = [json.loads(line) for line in worker.log_path.read_text().splitlines()
             if line.startswith("{")]  # fmt: skip
    outcomes = {e["job_id"]: e for e in lines if e.get("logger") == "credits.outcomes"}
    assert sorted(e["status"] for e in outcomes.values()) == [
        "awaiting_credits", "completed", "completed"
    ]  # fmt: skip
    for entry in outcomes.values():
        assert entry["member_id"] == tree.member_id and entry["cost"] == 5
    about_jobs = [e for e in lines if e.get("job_id") in outcomes]
    assert all(e["member_id"] == tree.member_id for e in about_jobs)
