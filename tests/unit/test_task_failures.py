"""An unforeseen exception in a task never silently drops a message: it is retried, and
if it keeps failing it is kept as a dead letter with its reason. Nobody is charged."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from shared.client import CreditsClient
from shared.errors import NotFound
from shared.models import DeadLetter
from shared.services import balances, jobs
from tests.factories import funded_member, note
from tests.unit.test_worker_inprocess import wait_until
from worker import tasks
from worker.pipeline import SendPipeline

pytestmark = pytest.mark.usefixtures("clean_environment")


@pytest.fixture
def settings(settings):
    """The conftest's settings, with a vendor that always delivers."""
    rates = {"stub_delivered_rate": 1.0, "stub_rejected_rate": 0.0, "stub_transient_rate": 0.0,
             "stub_timeout_rate": 0.0}  # fmt: skip
    return settings.model_copy(update=rates)


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(tasks, "_backoff", lambda retries: 0.01)


def test_a_bug_that_clears_on_retry_still_completes_the_job(
    monkeypatch,
    settings,
    client: CreditsClient,
    worker,
    sqlite_db,
):
    tree = funded_member(sqlite_db, account_credits=20, member_credits=10)
    real = SendPipeline.process
    failures = {"left": 2}

    def flaky(self, payload, **kwargs):
        if payload.get("job_id") == "flaky-1" and failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("a bug that goes away")
        return real(self, payload, **kwargs)

    monkeypatch.setattr(SendPipeline, "process", flaky)
    client.send_action(note("flaky-1", tree.member_id))

    def completed() -> bool:
        try:
            return jobs.get_view(sqlite_db, "flaky-1").status == "completed"
        except NotFound:
            return False

    wait_until(completed, "the job to complete after two failures")
    assert failures["left"] == 0
    assert balances.balance(sqlite_db, "member", tree.member_id).available == 5


def test_a_bug_that_never_clears_is_dead_lettered_and_charges_nobody(
    monkeypatch,
    settings,
    client: CreditsClient,
    worker,
    sqlite_db,
):
    tree = funded_member(sqlite_db, account_credits=20, member_credits=10)

    def broken(self, payload, **kwargs):
        raise RuntimeError("always broken")

    monkeypatch.setattr(SendPipeline, "process", broken)
    client.send_action(note("broken-1", tree.member_id))

    def letters():
        with sqlite_db.unit_of_work() as session:
            return list(session.scalars(select(DeadLetter.reason)))

    found = wait_until(letters, "a dead letter")
    assert found == ["unexpected RuntimeError after retries: always broken"]
    assert balances.balance(sqlite_db, "member", tree.member_id).available == 10
