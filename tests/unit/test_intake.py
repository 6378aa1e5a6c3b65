"""The intake outbox (Redis broker only, kombu#305) on SQLite and fakeredis: the producer
records each job before it publishes, the task removes the record when it starts, and the
intake sweep re-sends what no task started. Publishing is replaced by a list: these tests
have no Redis broker, only settings that name one."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from shared.client import CreditsClient
from shared.config import Settings, load_settings
from shared.errors import BrokerUnavailable, ConfigurationError
from shared.signing import sign, verify
from tests.factories import ALL_DELIVERED, accepted_job, funded_member, note
from worker import recovery as sweeps
from worker.pipeline import SendPipeline
from worker.resources import Resources
from worker.tasks.sweeps import beat_schedule

pytestmark = pytest.mark.usefixtures("clean_environment")

REDIS_BROKER = "redis://127.0.0.1:9/0"  # never connected to: publishing is replaced
PREFIX = "credits:"


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """What would have been published, as (job, auth) messages."""
    sent: list[dict] = []

    def publish(app, settings, payload, key, *, auth=None, deadline=None) -> None:
        sent.append({"job": payload, "auth": auth or sign(payload, key)})

    monkeypatch.setattr("shared.client.publish_job", publish)
    return sent


@pytest.fixture
def redis_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={**ALL_DELIVERED, "broker_url": REDIS_BROKER, "intake_after_s": 60.0}
    )


@pytest.fixture
def res(redis_settings: Settings) -> Iterator[Resources]:
    found = Resources(redis_settings)
    yield found
    found.close()


def records(redis) -> dict[str, float]:
    """{"member_id:job_id": score} of the intake set, each entry a signed message."""
    found = {}
    for raw, score in redis.zrange(f"{PREFIX}intake", 0, -1, withscores=True):
        job = json.loads(raw)["job"]
        found[f"{job['member_id']}:{job['job_id']}"] = score
    return found


def backdate(redis, job_id: str, seconds: float = 3600) -> None:
    """Make the intake entry of ``job_id`` ``seconds`` old."""
    for raw in redis.zrange(f"{PREFIX}intake", 0, -1):
        if json.loads(raw)["job"]["job_id"] == job_id:
            redis.zadd(f"{PREFIX}intake", {raw: time.time() - seconds})


# ---------------------------------------------------------------- the producer


def test_the_producer_records_the_job_before_it_publishes_with_a_redis_broker(
    res: Resources, published: list[dict]
) -> None:
    client = CreditsClient(settings=res.settings)
    before = time.time()
    client.send_action(note("j-1", 7))
    (member, score), = records(res.redis).items()  # fmt: skip
    assert member == "7:j-1" and before <= score <= time.time()
    (raw,) = res.redis.zrange(f"{PREFIX}intake", 0, -1)
    stored = json.loads(raw)
    assert stored == published[0]  # the message as published, its signature included
    assert verify(stored["job"], stored["auth"], res.settings.verify_keys()) == "test-key"


@pytest.mark.parametrize("broker", ["amqp://guest:guest@127.0.0.1:9//", "memory://"])
def test_no_intake_record_with_rabbitmq_or_the_memory_broker(
    res: Resources, published: list[dict], broker: str
) -> None:
    settings = res.settings.model_copy(update={"broker_url": broker})
    CreditsClient(settings=settings).send_action(note("j-1", 7))
    assert len(published) == 1
    assert records(res.redis) == {}
    assert "credits.recover_intake" not in beat_schedule(settings)
    assert "credits.recover_intake" in beat_schedule(res.settings)


def test_a_redis_that_does_not_answer_refuses_the_job_and_nothing_is_published(
    res: Resources, published: list[dict]
) -> None:
    settings = res.settings.model_copy(update={"publish_timeout_s": 0.3})
    client = CreditsClient(settings=settings, redis_url="redis://127.0.0.1:9/0")
    with pytest.raises(BrokerUnavailable, match="intake entry"):
        client.send_action(note("j-1", 7))
    assert published == []


def test_the_sweeps_re_sends_write_no_intake_record(res: Resources, published: list[dict]) -> None:
    res.client.republish(note("j-1", 7))
    assert len(published) == 1 and records(res.redis) == {}


# ---------------------------------------------------------------- the worker


def test_the_task_removes_the_record_when_it_starts(res: Resources, published: list) -> None:
    member = funded_member(res.db, account_credits=100, member_credits=50).member_id
    CreditsClient(settings=res.settings).send_action(note("j-1", member))
    assert set(records(res.redis)) == {f"{member}:j-1"}
    # the message as the worker gets it: through the broker's JSON
    result = SendPipeline(res).process((), json.loads(json.dumps(published[0])))
    assert result["status"] == "completed"
    assert records(res.redis) == {}


def test_an_unsigned_message_does_not_remove_a_record(res: Resources, published: list) -> None:
    member = funded_member(res.db, account_credits=100, member_credits=50).member_id
    CreditsClient(settings=res.settings).send_action(note("j-1", member))
    SendPipeline(res).process((), {"job": published[0]["job"]})  # a dead letter
    assert set(records(res.redis)) == {f"{member}:j-1"}


# ---------------------------------------------------------------- the sweep


def test_the_sweep_re_sends_an_old_record_without_a_row_and_drops_the_rest(
    res: Resources, published: list[dict]
) -> None:
    member = funded_member(res.db, account_credits=100, member_credits=50).member_id
    client = CreditsClient(settings=res.settings)
    for job_id in ("lost", "recorded", "young"):
        client.send_action(note(job_id, member))
    accepted_job(res.db, note("recorded", member))  # a worker got this one
    for job_id in ("lost", "recorded"):
        backdate(res.redis, job_id)
    sent_by_producer = list(published)
    published.clear()

    before = time.time()
    report = sweeps.recover_intake(res)

    assert report.counts == {"resent": 1, "recorded": 1}
    (resent,) = published
    assert resent == sent_by_producer[0]  # the producer's message, its signature unchanged
    left = records(res.redis)
    assert set(left) == {f"{member}:lost", f"{member}:young"}
    assert left[f"{member}:lost"] >= before  # tried again only after another interval
    # Run again at once: the re-sent job is young now, nothing else is due.
    published.clear()
    assert sweeps.recover_intake(res).counts == {}
    assert published == []


def test_the_sweep_drops_a_record_no_worker_would_accept(
    res: Resources, published: list[dict]
) -> None:
    job = note("forged", 7)
    forged = {"job": job, "auth": sign(job, ("test-key", "x" * 40))}
    res.redis.zadd(f"{PREFIX}intake", {json.dumps(forged): 0})
    res.redis.zadd(f"{PREFIX}intake", {"not json": 0})
    assert sweeps.recover_intake(res).counts == {"refused": 2}
    assert published == [] and res.redis.zcard(f"{PREFIX}intake") == 0


def test_the_sweep_does_nothing_without_a_redis_broker(
    res: Resources, published: list[dict]
) -> None:
    CreditsClient(settings=res.settings).send_action(note("j-1", 7))
    backdate(res.redis, "j-1")
    amqp = Resources(res.settings.model_copy(update={"broker_url": "amqp://127.0.0.1:9//"}))
    amqp.__dict__["redis"] = res.redis
    assert sweeps.recover_intake(amqp).counts == {}
    assert "7:j-1" in records(res.redis)


def test_intake_after_defaults_past_the_visibility_timeout(settings: Settings) -> None:
    s = settings.model_copy(update={"visibility_timeout_s": 300.0, "restore_interval_s": 10})
    assert s.intake_after > 310
    assert s.model_copy(update={"intake_after_s": 5.0}).intake_after == 5.0
    with pytest.raises(ConfigurationError, match="CREDITS_INTAKE_AFTER_S"):
        load_settings(intake_after_s=0)
