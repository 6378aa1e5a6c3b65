"""The stub fulfilment provider on fakeredis: seeded outcomes, vendor idempotency, outages,
the vendor timeout, and how settings pick the provider."""

from __future__ import annotations

import threading
from collections import Counter
from itertools import count

import fakeredis
import pytest

from shared.config import load_settings
from shared.errors import (
    ConfigurationError,
    PermanentVendorError,
    TransientVendorError,
    VendorOutcomeUnknown,
)
from shared.schemas import Job, parse_job
from tests.factories import email, gift_card, note, stub_rates
from tests.helpers import failures, race
from worker.fulfilment import Submission, VendorStatus, make_provider, stub
from worker.fulfilment.stub import StubProvider, StubRates

MIXED = StubRates(delivered=0.6, rejected=0.2, transient=0.15, timeout=0.05)
PAYLOADS = {"handwritten_note": note, "gift_card": gift_card, "email": email}


class FakeClock:
    """Stands in for the ``time`` module inside the stub; moves only when told (or slept)."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(stub, "time", fake)
    return fake


def provider_on(server: fakeredis.FakeServer, rates: StubRates = MIXED, **kwargs) -> StubProvider:
    return StubProvider(fakeredis.FakeRedis(server=server), rates, **kwargs)


def only(outcome: str, **extra: object) -> StubRates:
    """Rates under which every key is destined for ``outcome``."""
    rates = {"delivered": 0.0, "rejected": 0.0, "transient": 0.0, "timeout": 0.0}
    rates[outcome] = 1.0
    return StubRates(**rates, **extra)


def job(job_id: str, action: str = "handwritten_note") -> Job:
    return parse_job(PAYLOADS[action](job_id, 1))


def key_planned_for(provider: StubProvider, outcome: str, *, start: int = 0) -> str:
    for i in count(start):
        key = f"job-{i}"
        if provider.planned_outcome(key) == outcome:
            return key
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- the seeded draw


def test_the_same_seed_draws_the_same_outcome_for_every_key(server):
    first = provider_on(server)
    second = provider_on(fakeredis.FakeServer())
    keys = [f"job-{i}" for i in range(500)]
    assert [first.planned_outcome(k) for k in keys] == [second.planned_outcome(k) for k in keys]


def test_another_seed_draws_other_outcomes(server):
    seeded = provider_on(server, StubRates(0.6, 0.2, 0.15, 0.05, seed=1))
    keys = [f"job-{i}" for i in range(500)]
    same = sum(provider_on(server).planned_outcome(k) == seeded.planned_outcome(k) for k in keys)
    assert same < len(keys) * 0.9


def test_outcomes_follow_the_configured_rates_over_2000_keys(server):
    provider = provider_on(server)
    drawn = Counter(provider.planned_outcome(f"flow-{i}:step") for i in range(2000))
    for outcome, rate in (("delivered", 0.6), ("rejected", 0.2), ("transient", 0.15)):
        assert abs(drawn[outcome] / 2000 - rate) < 0.04, drawn
    assert abs(drawn["timeout"] / 2000 - 0.05) < 0.02, drawn


def test_a_zero_rate_is_never_drawn(server):
    provider = provider_on(
        server, StubRates(delivered=0.5, rejected=0.5, transient=0.0, timeout=0.0)
    )
    drawn = {provider.planned_outcome(f"k{i}") for i in range(500)}
    assert drawn == {"delivered", "rejected"}


# ---------------------------------------------------------------- outcomes of submit


def test_a_delivered_key_returns_a_submission_from_the_vendor_of_its_action(server):
    provider = provider_on(server, only("delivered"))
    sent = provider.submit(job("n-1"), idempotency_key="n-1")
    card = provider.submit(job("g-1", "gift_card"), idempotency_key="g-1")
    mail = provider.submit(job("e-1", "email"), idempotency_key="e-1")
    assert sent.vendor == "print-house" and sent.ref.startswith("PH-")
    assert card.vendor == "gift-vendor" and card.ref.startswith("GC-")
    assert mail.vendor == "channel-gateway" and mail.ref.startswith("CH-")
    assert provider.status("n-1") == VendorStatus.DELIVERED
    assert provider.sends("n-1") == 1


def test_a_transient_key_fails_transient_attempts_times_then_delivers(server):
    provider = provider_on(server, only("transient", transient_attempts=3))
    for attempt in (1, 2, 3):
        with pytest.raises(TransientVendorError, match=f"attempt {attempt}"):
            provider.submit(job("t-1"), idempotency_key="t-1")
        assert provider.sends("t-1") == 0
        assert provider.status("t-1") == VendorStatus.UNKNOWN
    sent = provider.submit(job("t-1"), idempotency_key="t-1")
    assert isinstance(sent, Submission)
    assert provider.status("t-1") == VendorStatus.DELIVERED
    assert provider.sends("t-1") == 1


def test_a_rejected_key_raises_permanent_error_and_status_says_failed(server):
    provider = provider_on(server, only("rejected"))
    with pytest.raises(PermanentVendorError, match="address undeliverable"):
        provider.submit(job("r-1"), idempotency_key="r-1")
    assert provider.status("r-1") == VendorStatus.FAILED
    assert provider.sends("r-1") == 0


def test_a_rejected_key_stays_rejected_when_submitted_again(server):
    provider = provider_on(server, only("rejected"))
    for _ in range(3):
        with pytest.raises(PermanentVendorError):
            provider.submit(job("r-1", "gift_card"), idempotency_key="r-1")
    assert provider.status("r-1") == VendorStatus.FAILED
    assert provider.sends("r-1") == 0


def test_a_timeout_is_pending_until_pending_s_then_settles(server, clock):
    provider = provider_on(server, only("timeout", pending_s=30.0))
    with pytest.raises(VendorOutcomeUnknown, match="did not answer"):
        provider.submit(job("o-1"), idempotency_key="o-1")
    assert provider.status("o-1") == VendorStatus.PENDING
    clock.advance(29.0)
    assert provider.status("o-1") == VendorStatus.PENDING
    clock.advance(2.0)
    assert provider.status("o-1") in (VendorStatus.DELIVERED, VendorStatus.FAILED)


def test_timeouts_settle_as_delivered_or_failed_and_only_delivered_ones_were_sent(server, clock):
    provider = provider_on(server, only("timeout", pending_s=1.0))
    keys = [f"o-{i}" for i in range(40)]
    for key in keys:
        with pytest.raises(VendorOutcomeUnknown):
            provider.submit(job(key), idempotency_key=key)
    clock.advance(2.0)
    settled = {key: provider.status(key) for key in keys}
    assert set(settled.values()) == {VendorStatus.DELIVERED, VendorStatus.FAILED}
    for key, status in settled.items():
        assert provider.sends(key) == (1 if status == VendorStatus.DELIVERED else 0)


def test_resubmitting_a_timed_out_key_replays_what_really_happened(server, clock):
    provider = provider_on(server, only("timeout", pending_s=1.0))
    outcomes = {}
    for key in (f"o-{i}" for i in range(20)):
        with pytest.raises(VendorOutcomeUnknown):
            provider.submit(job(key), idempotency_key=key)
        try:
            provider.submit(job(key), idempotency_key=key)
            outcomes[key] = "delivered"
        except PermanentVendorError:
            outcomes[key] = "failed"
    clock.advance(2.0)
    assert {provider.status(k).value for k in outcomes} == {"delivered", "failed"}
    assert all(provider.status(k).value == truth for k, truth in outcomes.items())
    assert all(provider.sends(k) <= 1 for k in outcomes)


# ---------------------------------------------------------------- vendor-side idempotency


def test_the_same_key_submitted_again_never_sends_twice(server):
    provider = provider_on(server, only("delivered"))
    refs = {provider.submit(job("d-1"), idempotency_key="d-1").ref for _ in range(5)}
    assert len(refs) == 1
    assert provider.sends("d-1") == 1


def test_two_workers_sharing_the_vendor_send_a_key_once(server):
    key = key_planned_for(provider_on(server), "delivered")
    first, second = provider_on(server), provider_on(server)
    first.submit(job(key), idempotency_key=key)
    second.submit(job(key), idempotency_key=key)
    assert first.sends(key) == second.sends(key) == 1


@pytest.mark.parametrize("threads", [2, 8])
def test_concurrent_submits_of_one_key_send_it_once(server, threads):
    results = race(threads, lambda _: provider_on(server, only("delivered")).submit(
        job("c-1"), idempotency_key="c-1"))  # fmt: skip
    assert failures(results) == []
    assert len({r.ref for r in results}) == 1
    assert provider_on(server).sends("c-1") == 1


class InterleavingRedis:
    """A Redis client whose threads all read a key's outcome before any of them writes one:
    the worst interleaving of concurrent submits, made certain instead of left to luck."""

    def __init__(self, redis: fakeredis.FakeRedis, barrier: threading.Barrier) -> None:
        self._redis = redis
        self._barrier = barrier
        self._waited = False

    def hget(self, name: str, key: str):
        value = self._redis.hget(name, key)
        if key == "outcome" and not self._waited:  # only the first read, before any write
            self._waited = True
            self._barrier.wait(timeout=10)
        return value

    def __getattr__(self, name: str):
        return getattr(self._redis, name)


@pytest.mark.parametrize("outcome", ["delivered", "timeout"])
def test_submits_that_all_saw_no_outcome_yet_still_send_once(server, outcome):
    threads = 4
    everyone_has_looked = threading.Barrier(threads)

    def submit(_: int) -> Submission:
        redis = InterleavingRedis(fakeredis.FakeRedis(server=server), everyone_has_looked)
        return StubProvider(redis, only(outcome)).submit(job("c-1"), idempotency_key="c-1")

    results = race(threads, submit)
    assert not any(isinstance(r, threading.BrokenBarrierError) for r in results), results
    assert provider_on(server).sends("c-1") <= 1
    if outcome == "delivered":
        assert failures(results) == []
        assert provider_on(server).sends("c-1") == 1
    else:  # one call settled the key and cannot know; the others replay what it did
        assert sum(isinstance(r, VendorOutcomeUnknown) for r in results) == 1, results


def test_keys_are_independent(server):
    provider = provider_on(server, only("delivered"))
    provider.submit(job("a"), idempotency_key="a")
    assert provider.sends("a") == 1
    assert provider.sends("b") == 0
    assert provider.status("b") == VendorStatus.UNKNOWN


# ---------------------------------------------------------------- outages and lookups


def test_during_an_outage_submit_is_transient_and_status_is_unreachable(server):
    provider = provider_on(server, only("delivered"))
    provider.set_outage(True)
    assert provider.outage
    with pytest.raises(TransientVendorError, match="outage"):
        provider.submit(job("x-1"), idempotency_key="x-1")
    with pytest.raises(TransientVendorError, match="outage"):
        provider.status("x-1")
    assert provider.sends("x-1") == 0


def test_after_an_outage_the_key_delivers_normally(server):
    provider = provider_on(server, only("delivered"))
    provider.set_outage(True)
    with pytest.raises(TransientVendorError):
        provider.submit(job("x-1"), idempotency_key="x-1")
    provider.set_outage(False)
    assert not provider.outage
    provider.submit(job("x-1"), idempotency_key="x-1")
    assert provider.status("x-1") == VendorStatus.DELIVERED
    assert provider.sends("x-1") == 1


def test_an_outage_is_seen_by_every_provider_on_the_same_redis(server):
    provider_on(server).set_outage(True)
    with pytest.raises(TransientVendorError):
        provider_on(server).submit(job("x-1"), idempotency_key="x-1")


def test_a_key_the_vendor_never_saw_has_status_unknown(server):
    assert provider_on(server).status("never-sent") == VendorStatus.UNKNOWN


def test_rates_come_from_settings():
    settings = load_settings(
        stub_delivered_rate=0.5,
        stub_rejected_rate=0.25,
        stub_transient_rate=0.2,
        stub_timeout_rate=0.05,
        stub_transient_attempts=4,
        stub_latency_ms=0,
        stub_pending_s=9,
        stub_seed=3,
    )
    assert StubRates.from_settings(settings) == StubRates(0.5, 0.25, 0.2, 0.05, 4, 0, 9, 3)


def test_a_send_after_a_void_reports_the_void_and_never_sends(server):
    # given a key the resolver voided (a send of it never reached the vendor)
    provider = StubProvider(fakeredis.FakeRedis(server=server), only("delivered"), prefix="t:")
    task = parse_job({"job_id": "v1", "member_id": 1, "action": "task", "title": "t"})
    assert provider.void("v1") == VendorStatus.FAILED
    # when the late send arrives, it is refused and nothing is sent
    with pytest.raises(PermanentVendorError, match="voided"):
        provider.submit(task, idempotency_key="v1")
    assert provider.sends("v1") == 0


def test_a_void_after_a_send_reports_what_the_send_did(server):
    # a send settles its key in one atomic call, so a void after it cannot undo it
    provider = StubProvider(fakeredis.FakeRedis(server=server), only("delivered"), prefix="t:")
    task = parse_job({"job_id": "v2", "member_id": 1, "action": "task", "title": "t"})
    provider.submit(task, idempotency_key="v2")
    assert provider.void("v2") == VendorStatus.DELIVERED
    assert provider.sends("v2") == 1


# ---------------------------------------------------------------- the vendor timeout


def test_a_vendor_slower_than_the_timeout_is_an_unknown_outcome_though_it_sent(server, clock):
    # given a vendor that takes 0.5 s to 1.5 s, and a timeout of 0.2 s
    provider = provider_on(server, only("delivered", latency_ms=1000), timeout_s=0.2)
    started = clock.now
    # when a note is sent
    with pytest.raises(VendorOutcomeUnknown, match=r"no answer within 0\.2s"):
        provider.submit(job("slow-1"), idempotency_key="slow-1")
    # then the caller waited no longer than the timeout, and the vendor did act
    assert clock.now - started == pytest.approx(0.2)
    assert provider.sends("slow-1") == 1
    assert provider.status("slow-1") == VendorStatus.DELIVERED


def test_a_vendor_within_the_timeout_answers_normally(server, clock):
    provider = provider_on(server, only("delivered", latency_ms=100), timeout_s=5.0)
    started = clock.now
    sent = provider.submit(job("quick-1"), idempotency_key="quick-1")
    assert sent.ref.startswith("PH-")
    assert 0.05 <= clock.now - started <= 0.15


def test_asking_a_slow_vendor_again_replays_the_send_it_made(server, clock):
    provider = provider_on(server, only("delivered", latency_ms=1000), timeout_s=0.2)
    with pytest.raises(VendorOutcomeUnknown):
        provider.submit(job("slow-1"), idempotency_key="slow-1")
    again = provider.submit(job("slow-1"), idempotency_key="slow-1")
    assert again.ref.startswith("PH-")
    assert provider.sends("slow-1") == 1


# ---------------------------------------------------------------- the provider setting


def test_the_provider_setting_picks_the_stub_with_its_settings(server):
    settings = load_settings(provider="stub", vendor_timeout_s=2.5, key_prefix="acme:",
                             stub_seed=7, **stub_rates("rejected"))  # fmt: skip
    provider = make_provider(settings, fakeredis.FakeRedis(server=server))
    assert isinstance(provider, StubProvider)
    assert provider.timeout_s == 2.5
    assert provider.rates == StubRates.from_settings(settings)
    with pytest.raises(PermanentVendorError):
        provider.submit(job("r-1"), idempotency_key="r-1")
    assert fakeredis.FakeRedis(server=server).exists("acme:stub:send:r-1")


def test_a_provider_that_does_not_ship_is_refused_at_start_up():
    with pytest.raises(ConfigurationError, match="CREDITS_PROVIDER: Input should be 'stub'"):
        load_settings(provider="acme-print")
