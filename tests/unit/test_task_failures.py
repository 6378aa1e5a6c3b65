"""The task base class, through a real in-process worker: every failure is retried on a
budget of its own reason (a lock, the vendor, infrastructure, a bug), and a message whose
budget runs out is kept as a dead letter with its reason. Nobody is charged for it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import select

from shared.client import CreditsClient
from shared.errors import NotFound
from shared.models import DeadLetter
from shared.services import balances, job_reports
from tests.factories import ALL_DELIVERED, funded_member, note
from tests.helpers import wait_until
from worker.pipeline import SendPipeline
from worker.retry import LockBusy
from worker.tasks import base

DEADLINE_S = 30.0  # never reached when green
pytestmark = pytest.mark.usefixtures("clean_environment")


@pytest.fixture
def settings(settings):
    """The unit settings, with a vendor that always delivers."""
    return settings.model_copy(update=ALL_DELIVERED)


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(base, "backoff_s", lambda *_: 0.01)
    monkeypatch.setattr(base, "LOCK_BUSY_COUNTDOWN_S", (0.0, 0.01))


class Scripted:
    """Stands in for ``SendPipeline.process``: raises the scripted errors of one job, one
    per delivery, then runs the real pipeline; records the retry budgets each delivery saw."""

    def __init__(self, job_id: str, *errors: Callable[[], Exception], forever=None) -> None:
        self.job_id = job_id
        self.errors = list(errors)
        self.forever = forever
        self.budgets_seen: list[dict[str, int]] = []
        self.real = SendPipeline.process

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def process(pipeline: SendPipeline, *args: Any, **kwargs: Any) -> dict:
            return self(pipeline, *args, **kwargs)

        monkeypatch.setattr(SendPipeline, "process", process)

    def __call__(self, pipeline: SendPipeline, args: tuple, kwargs: dict[str, Any], **where):
        job = kwargs.get("job") or {}
        if job.get("job_id") != self.job_id:
            return self.real(pipeline, args, kwargs, **where)
        self.budgets_seen.append(dict(kwargs.get("retries") or {}))
        if self.errors:
            raise self.errors.pop(0)()
        if self.forever is not None:
            raise self.forever()
        return self.real(pipeline, args, kwargs, **where)


def job_status(db, member_id: int, job_id: str) -> str | None:
    try:
        return job_reports.get_view(db, member_id, job_id).status
    except NotFound:
        return None


def dead_letter_reasons(db) -> list[str]:
    with db.unit_of_work() as session:
        return list(session.scalars(select(DeadLetter.reason)))


def test_a_bug_that_clears_on_retry_still_completes_the_job(
    monkeypatch, client: CreditsClient, worker, db
):
    tree = funded_member(db, account_credits=20, member_credits=10)
    bug = lambda: RuntimeError("a bug that goes away")  # noqa: E731
    script = Scripted("flaky-1", bug, bug)
    script.install(monkeypatch)
    client.send_action(note("flaky-1", tree.member_id))
    wait_until(lambda: job_status(db, tree.member_id, "flaky-1") == "completed", DEADLINE_S,
               "the job to complete after two failures")  # fmt: skip
    assert script.budgets_seen == [{}, {"unexpected": 1}, {"unexpected": 2}]
    assert balances.balance(db, "member", tree.member_id).available == 5


def test_a_lost_connection_is_retried_on_its_own_budget_and_the_job_completes(
    monkeypatch, client: CreditsClient, worker, db
):
    tree = funded_member(db, account_credits=20, member_credits=10)
    redis_down = lambda: RedisConnectionError("Connection refused")  # noqa: E731
    script = Scripted("net-1", redis_down, redis_down, redis_down)
    script.install(monkeypatch)
    client.send_action(note("net-1", tree.member_id))
    wait_until(lambda: job_status(db, tree.member_id, "net-1") == "completed", DEADLINE_S,
               "the job to complete once Redis is back")  # fmt: skip
    assert script.budgets_seen[-1] == {"infra": 3}
    assert dead_letter_reasons(db) == []


def test_a_bug_that_never_clears_is_dead_lettered_and_charges_nobody(
    monkeypatch, client: CreditsClient, worker, db
):
    tree = funded_member(db, account_credits=20, member_credits=10)
    script = Scripted("broken-1", forever=lambda: RuntimeError("always broken"))
    script.install(monkeypatch)
    client.send_action(note("broken-1", tree.member_id))
    found = wait_until(lambda: dead_letter_reasons(db), DEADLINE_S, "a dead letter")
    assert found == ["unexpected RuntimeError after retries: always broken"]
    unexpected = base.CreditsTask.budgets[base.Reason.UNEXPECTED]
    assert len(script.budgets_seen) == unexpected + 1  # the first run, then every retry
    assert balances.balance(db, "member", tree.member_id).available == 10


def test_waiting_on_a_lock_does_not_spend_the_budget_for_bugs(
    monkeypatch, client: CreditsClient, worker, db
):
    # given a message that finds its job locked five times, then hits a bug for good
    tree = funded_member(db, account_credits=20, member_credits=10)
    busy = lambda: LockBusy("another delivery of this job is running")  # noqa: E731
    script = Scripted("locked-1", *[busy] * 5, forever=lambda: RuntimeError("always broken"))
    script.install(monkeypatch)
    # when it is sent
    client.send_action(note("locked-1", tree.member_id))
    # then it still got every retry the bug budget allows, and then became a dead letter
    found = wait_until(lambda: dead_letter_reasons(db), DEADLINE_S, "a dead letter")
    assert found == ["unexpected RuntimeError after retries: always broken"]
    unexpected = base.CreditsTask.budgets[base.Reason.UNEXPECTED]
    assert len(script.budgets_seen) == 5 + unexpected + 1
    assert script.budgets_seen[5] == {"lock": 5}
    assert script.budgets_seen[-1] == {"lock": 5, "unexpected": unexpected}
    assert balances.balance(db, "member", tree.member_id).available == 10
