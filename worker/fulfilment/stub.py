"""A realistic fulfilment stub: three vendors behind the provider interface.

The stub models a print house (handwritten notes, postcards), a gift-card vendor, and a
channel gateway for the free actions and lead acceptance. Outcomes are drawn from seeded,
configurable rates by hashing the idempotency key, so every worker process draws the same
outcome for the same job. Vendor state lives in Redis (``CREDITS_STUB_REDIS_URL``: its
own DB, apart from the broker, as a real vendor's records would be), shared by all
workers, which is what makes vendor-side idempotency real: a key sends at most once.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass
from typing import Any

from shared.errors import PermanentVendorError, TransientVendorError, VendorOutcomeUnknown
from shared.schemas import Job
from worker.fulfilment import Submission, VendorStatus

# Settle a key once: the first outcome wins, with its fields and its send count, atomically.
_SETTLE = """
if redis.call('HSETNX', KEYS[1], 'outcome', ARGV[1]) == 0 then
    return 0
end
for i = 3, #ARGV, 2 do
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
if ARGV[2] == '1' then
    redis.call('HINCRBY', KEYS[1], 'sends', 1)
end
return 1
"""

VENDORS = {
    "handwritten_note": ("print-house", "PH"),
    "postcard": ("print-house", "PH"),
    "gift_card": ("gift-vendor", "GC"),
}
CHANNEL = ("channel-gateway", "CH")
REJECTIONS = {
    "print-house": "address undeliverable",
    "gift-vendor": "card brand unavailable for this denomination",
    "channel-gateway": "recipient opted out",
}


@dataclass(frozen=True)
class StubRates:
    delivered: float
    rejected: float
    transient: float
    timeout: float
    transient_attempts: int = 1
    latency_ms: float = 0.0
    pending_s: float = 5.0
    seed: int = 0

    @classmethod
    def from_settings(cls, settings: Any) -> StubRates:
        return cls(
            settings.stub_delivered_rate,
            settings.stub_rejected_rate,
            settings.stub_transient_rate,
            settings.stub_timeout_rate,
            settings.stub_transient_attempts,
            settings.stub_latency_ms,
            settings.stub_pending_s,
            settings.stub_seed,
        )


class StubProvider:
    """Seeded vendor stub with shared, idempotent state in Redis (or fakeredis)."""

    def __init__(
        self, redis: Any, rates: StubRates, *, prefix: str = "credits:", timeout_s: float = 30.0
    ) -> None:
        self.redis = redis
        self.rates = rates
        self.prefix = f"{prefix}stub:"
        self.timeout_s = timeout_s
        self._settle_script = redis.register_script(_SETTLE)

    # -- the draw

    def _unit(self, key: str, salt: str) -> float:
        digest = hashlib.sha256(f"{self.rates.seed}:{salt}:{key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def planned_outcome(self, key: str) -> str:
        """The outcome this key is destined for: delivered, rejected, transient or timeout."""
        u, r = self._unit(key, "outcome"), self.rates
        for name, rate in (
            ("delivered", r.delivered),
            ("rejected", r.rejected),
            ("transient", r.transient),
        ):
            if u < rate:
                return name
            u -= rate
        return "timeout"

    # -- the interface

    def submit(self, job: Job, *, idempotency_key: str) -> Submission:
        vendor, ref_prefix = VENDORS.get(job.action, CHANNEL)
        record = self._record_key(idempotency_key)
        late = self._latency()
        if self.outage:
            raise TransientVendorError(f"{vendor} unreachable (outage)")
        attempt = self.redis.hincrby(record, "attempts", 1)
        known = self.redis.hget(record, "outcome")
        if known is not None:  # the same key never sends twice: replay what happened
            return self._replay(vendor, record, known.decode())
        plan = self.planned_outcome(idempotency_key)
        if plan == "transient" and attempt <= self.rates.transient_attempts:
            raise TransientVendorError(f"{vendor} busy (HTTP 503), attempt {attempt}")
        ref = f"{ref_prefix}-{hashlib.sha1(idempotency_key.encode()).hexdigest()[:12]}"  # noqa: S324
        # Whoever settles the key first wins (a concurrent send, or the resolver's void);
        # a loser reports what really happened, never its own plan.
        if plan == "rejected":
            if not self._settle(record, "failed", ref, vendor):
                return self._replay(vendor, record, self._outcome(record))
            raise PermanentVendorError(f"{vendor} refused: {REJECTIONS[vendor]}")
        if plan == "timeout":
            # The vendor did act; only the reply was lost. Half of these went out.
            truth = "delivered" if self._unit(idempotency_key, "timeout") < 0.5 else "failed"
            if not self._settle(record, truth, ref, vendor, pending=True):
                return self._replay(vendor, record, self._outcome(record))
            raise VendorOutcomeUnknown(f"{vendor} did not answer in time")
        if not self._settle(record, "delivered", ref, vendor):
            return self._replay(vendor, record, self._outcome(record))
        if late:
            # The vendor sent it, but its answer came after our timeout: we cannot know.
            raise VendorOutcomeUnknown(f"{vendor} gave no answer within {self.timeout_s:g}s")
        return Submission(vendor, ref)

    def _outcome(self, record: str) -> str:
        return self.redis.hget(record, "outcome").decode()

    def status(self, idempotency_key: str) -> VendorStatus:
        if self.outage:
            raise TransientVendorError("vendor unreachable (outage)")
        fields = self.redis.hgetall(self._record_key(idempotency_key))
        outcome = fields.get(b"outcome")
        if outcome is None:
            return VendorStatus.UNKNOWN
        pending_until = float(fields.get(b"pending_until", b"0"))
        if time.time() < pending_until:
            return VendorStatus.PENDING
        return VendorStatus(outcome.decode())

    def void(self, idempotency_key: str) -> VendorStatus:
        if self.outage:
            raise TransientVendorError("vendor unreachable (outage)")
        record = self._record_key(idempotency_key)
        if self._record(record, "failed", {"voided": "1", "vendor": "void", "ref": ""}, sent=False):
            return VendorStatus.FAILED
        return self.status(idempotency_key)

    # -- observation, for tests and the demo

    def sends(self, idempotency_key: str) -> int:
        """How many physical sends happened for this key (never more than one)."""
        return int(self.redis.hget(self._record_key(idempotency_key), "sends") or 0)

    @property
    def outage(self) -> bool:
        return bool(self.redis.exists(f"{self.prefix}outage"))

    def set_outage(self, on: bool, *, ttl_s: int | None = None) -> None:
        if on:
            self.redis.set(f"{self.prefix}outage", "1", ex=ttl_s)
        else:
            self.redis.delete(f"{self.prefix}outage")

    # -- internals

    def _record_key(self, idempotency_key: str) -> str:
        return f"{self.prefix}send:{idempotency_key}"

    def _settle(self, record: str, outcome: str, ref: str, vendor: str, *, pending=False) -> bool:
        """Record the outcome unless another call (a send, a void) got there first."""
        fields = {"ref": ref, "vendor": vendor}
        if pending:
            fields["pending_until"] = f"{time.time() + self.rates.pending_s:.3f}"
        return self._record(record, outcome, fields, sent=outcome == "delivered")

    def _record(self, record: str, outcome: str, fields: dict[str, str], *, sent: bool) -> bool:
        # One script: Redis dying half-way must not leave an outcome without its send count.
        args: list[str] = [outcome, "1" if sent else "0"]
        for key, value in fields.items():
            args.extend((key, value))
        return bool(self._settle_script(keys=[record], args=args))

    def _replay(self, vendor: str, record: str, outcome: str) -> Submission:
        if outcome == "failed":
            if self.redis.hget(record, "voided"):
                raise PermanentVendorError(f"{vendor} refused: the order was voided")
            raise PermanentVendorError(f"{vendor} refused: {REJECTIONS[vendor]}")
        ref = self.redis.hget(record, "ref")
        return Submission(vendor, ref.decode() if ref else "")

    def _latency(self) -> bool:
        """Wait as long as the vendor takes, but no longer than our timeout; True when the
        answer would have come too late (the call then ends in VendorOutcomeUnknown)."""
        if self.rates.latency_ms <= 0:
            return False
        latency_s = self.rates.latency_ms * random.uniform(0.5, 1.5) / 1000
        time.sleep(min(latency_s, self.timeout_s))
        return latency_s > self.timeout_s
