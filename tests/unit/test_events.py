"""The outcome stream on fakeredis: published once per (member, job_id, status), read by
flow engines, who wait for their own member's job."""

from __future__ import annotations

import threading

import fakeredis
import pytest

from shared.adapters.events import EventStream
from shared.client import CreditsClient
from shared.config import load_settings
from shared.events import FINAL_STATUSES, Event, is_outcome_for, typed
from tests.factories import SIGNING_KEY

WAIT_S = 5.0  # an upper bound for events that are already there; never reached when green
MEMBER = 7


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def redis(server) -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=server)


@pytest.fixture
def stream(redis) -> EventStream:
    return EventStream(redis, "test:events", maxlen=1000)


def event(job_id: str = "job-1", status: str = "completed", **extra: object) -> Event:
    values: dict[str, object] = {
        "member_id": MEMBER,
        "cost": 5,
        "available": 10,
        "held": 0,
        **extra,
    }
    return Event(job_id, status, **values)


# ---------------------------------------------------------------- publish once


def test_an_event_is_published_once_per_job_and_status(stream):
    first = stream.publish(event())
    again = stream.publish(event(cost=99))
    assert first is not None
    assert again is None
    published = list(stream.all())
    assert len(published) == 1
    assert published[0]["cost"] == "5"


def test_another_status_of_the_same_job_is_published(stream):
    assert stream.publish(event(status="submitted"))
    assert stream.publish(event(status="completed"))
    assert [e["status"] for e in stream.all()] == ["submitted", "completed"]


def test_the_same_status_of_another_job_is_published(stream):
    assert stream.publish(event("job-1"))
    assert stream.publish(event("job-2"))
    assert [e["job_id"] for e in stream.all()] == ["job-1", "job-2"]


def test_the_same_job_id_and_status_of_another_member_is_published(stream):
    assert stream.publish(event("flow-1:step-2", member_id=MEMBER))
    assert stream.publish(event("flow-1:step-2", member_id=MEMBER + 1))
    assert stream.publish(event("flow-1:step-2", member_id=MEMBER + 1)) is None
    assert [e["member_id"] for e in stream.all()] == [str(MEMBER), str(MEMBER + 1)]


def test_publish_once_markers_belong_to_their_stream(redis):
    one = EventStream(redis, "a:events")
    two = EventStream(redis, "b:events")
    assert one.publish(event())
    assert two.publish(event())
    assert len(list(two.all())) == 1


def test_publish_returns_the_stream_id_of_the_new_entry(stream):
    entry_id = stream.publish(event())
    assert stream.last_id() == entry_id
    assert [i for i, _ in stream.read("0-0")] == [entry_id]


# ---------------------------------------------------------------- fields


@pytest.mark.parametrize("status", FINAL_STATUSES)
def test_final_statuses_carry_final_1(stream, status):
    stream.publish(event(status=status))
    (published,) = stream.all()
    assert published["final"] == "1"
    assert event(status=status).final


@pytest.mark.parametrize("status", ["received", "submitted", "awaiting_credits", "reserved"])
def test_other_statuses_carry_final_0(stream, status):
    stream.publish(event(status=status))
    (published,) = stream.all()
    assert published["final"] == "0"
    assert not event(status=status).final


def test_fields_are_strings_and_unset_ones_are_left_out(stream):
    stream.publish(event(flow_id="flow-1", step_id=None, reason=None))
    (published,) = stream.all()
    assert published["job_id"] == "job-1"
    assert published["member_id"] == str(MEMBER)
    assert published["available"] == "10"
    assert published["flow_id"] == "flow-1"
    assert "step_id" not in published
    assert "reason" not in published
    assert float(published["at"]) > 0


def test_read_after_an_id_skips_what_came_before(stream):
    stream.publish(event("job-1"))
    mark = stream.last_id()
    stream.publish(event("job-2"))
    assert [e["job_id"] for _, e in stream.read(mark)] == ["job-2"]


def test_last_id_of_an_empty_stream_is_the_start(stream):
    assert stream.last_id() == "0-0"


# ---------------------------------------------------------------- wait_for


def test_wait_for_returns_the_final_event_of_the_job(stream):
    mark = stream.last_id()
    stream.publish(event("job-1", "submitted"))
    stream.publish(event("job-1", "completed"))
    found = stream.wait_for(MEMBER, "job-1", mark, timeout_s=WAIT_S)
    assert found is not None
    assert found["status"] == "completed"
    assert found["final"] == "1"


def test_wait_for_returns_when_the_job_is_awaiting_credits(stream):
    mark = stream.last_id()
    stream.publish(event("job-1", "awaiting_credits", cost=5, available=2))
    found = stream.wait_for(MEMBER, "job-1", mark, timeout_s=WAIT_S)
    assert found is not None
    assert found["status"] == "awaiting_credits"


def test_wait_for_ignores_outcomes_of_other_jobs(stream):
    mark = stream.last_id()
    stream.publish(event("job-2", "completed"))
    stream.publish(event("job-3", "awaiting_credits"))
    stream.publish(event("job-1", "refunded"))
    found = stream.wait_for(MEMBER, "job-1", mark, timeout_s=WAIT_S)
    assert found is not None
    assert (found["job_id"], found["status"]) == ("job-1", "refunded")


def test_wait_for_ignores_another_members_job_with_the_same_job_id(stream):
    mark = stream.last_id()
    stream.publish(event("job-1", "completed", member_id=MEMBER + 1))
    stream.publish(event("job-1", "refunded", member_id=MEMBER))
    found = stream.wait_for(MEMBER, "job-1", mark, timeout_s=WAIT_S)
    assert found is not None
    assert (found["member_id"], found["status"]) == (str(MEMBER), "refunded")


@pytest.mark.parametrize(
    ("fields", "ends_the_wait"),
    [
        ({"job_id": "j", "member_id": "7", "status": "completed", "final": "1"}, True),
        ({"job_id": "j", "member_id": "7", "status": "awaiting_credits", "final": "0"}, True),
        ({"job_id": "j", "member_id": "7", "status": "submitted", "final": "0"}, False),
        ({"job_id": "j", "member_id": "8", "status": "completed", "final": "1"}, False),
        ({"job_id": "k", "member_id": "7", "status": "completed", "final": "1"}, False),
    ],
)
def test_an_outcome_for_a_job_is_final_or_parked_and_of_that_member(fields, ends_the_wait):
    assert is_outcome_for(fields, 7, "j") is ends_the_wait


def test_wait_for_returns_none_after_the_timeout_when_only_other_jobs_finish(stream):
    mark = stream.last_id()
    stream.publish(event("job-2", "completed"))
    stream.publish(event("job-1", "submitted"))
    assert stream.wait_for(MEMBER, "job-1", mark, timeout_s=0.2) is None


def test_wait_for_ignores_events_before_the_given_id(stream):
    stream.publish(event("job-1", "completed"))
    assert stream.wait_for(MEMBER, "job-1", stream.last_id(), timeout_s=0.2) is None


def test_wait_for_sees_an_event_another_client_publishes_concurrently(server, stream):
    mark = stream.last_id()
    publisher = EventStream(fakeredis.FakeRedis(server=server), stream.stream)

    def publish() -> None:
        publisher.publish(event("job-2", "completed"))
        publisher.publish(event("job-1", "expired"))

    thread = threading.Thread(target=publish)
    thread.start()
    found = stream.wait_for(MEMBER, "job-1", mark, timeout_s=WAIT_S)
    thread.join(WAIT_S)
    assert found is not None
    assert found["status"] == "expired"


def test_typed_turns_stream_strings_into_numbers_and_a_flag():
    event = typed({"job_id": "j", "status": "completed", "cost": "5", "member_id": "3",
                   "available": "7", "held": "0", "final": "1", "at": "12.5"})  # fmt: skip
    assert event == {"job_id": "j", "status": "completed", "cost": 5, "member_id": 3,
                     "available": 7, "held": 0, "final": True, "at": 12.5}  # fmt: skip


@pytest.mark.usefixtures("clean_environment")
def test_a_client_given_only_a_redis_broker_reads_outcomes_from_that_redis():
    settings = load_settings(redis_url="redis://elsewhere:6379/0", job_signing_key=SIGNING_KEY)
    client = CreditsClient("redis://broker-host:6379/3", settings=settings)
    assert client.redis_url == "redis://broker-host:6379/3"
    explicit = CreditsClient("redis://b:6379/3", redis_url="redis://r:6379/1", settings=settings)
    assert explicit.redis_url == "redis://r:6379/1"
    client.close()
    explicit.close()
