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

# One vendor call is one round trip, as an HTTP call would be: the outage check, the
# attempt count, the replay of a settled key, and the settling of a new one, atomically.
# ARGV: the plan ("delivered", "failed" or "transient"), how many transient failures come
# first, the outcome a transient plan settles to afterwards, "1" if that outcome is a
# physical send, then the record's field pairs.
_SUBMIT = """
if redis.call('EXISTS', KEYS[2]) == 1 then
    return {'outage'}
end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
local known = redis.call('HMGET', KEYS[1], 'outcome', 'ref', 'voided')
if known[1] then
    return {'replay', known[1], known[2] or '', known[3] or ''}
end
local outcome = ARGV[1]
if outcome == 'transient' then
    if attempt <= tonumber(ARGV[2]) then
        return {'transient', tostring(attempt)}
    end
    outcome = ARGV[3]
end
redis.call('HSET', KEYS[1], 'outcome', outcome)
for i = 5, #ARGV, 2 do
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
if ARGV[4] == '1' then
    redis.call('HINCRBY', KEYS[1], 'sends', 1)
end
return {'settled', outcome}
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
        self._outage_key = f"{self.prefix}outage"
        self._settle_script = redis.register_script(_SETTLE)
        self._submit_script = redis.register_script(_SUBMIT)

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
        late = self._latency()
        plan = self.planned_outcome(idempotency_key)
        ref = f"{ref_prefix}-{hashlib.sha1(idempotency_key.encode()).hexdigest()[:12]}"  # noqa: S324
        fields = {"ref": ref, "vendor": vendor}
        outcome = {"rejected": "failed", "timeout": None}.get(plan, "delivered")
        if plan == "timeout":
            # The vendor did act; only the reply was lost. Half of these went out.
            sent = self._unit(idempotency_key, "timeout") < 0.5
            outcome = "delivered" if sent else "failed"
            fields["pending_until"] = f"{time.time() + self.rates.pending_s:.3f}"
        args = ["transient" if plan == "transient" else outcome, self.rates.transient_attempts,
                outcome, "1" if outcome == "delivered" else "0"]  # fmt: skip
        for key, value in fields.items():
            args.extend((key, value))
        answer = [
            part.decode() if isinstance(part, bytes) else str(part)
            for part in self._submit_script(
                keys=[self._record_key(idempotency_key), self._outage_key], args=args
            )
        ]
        return self._answer(vendor, plan, ref, answer, late=late)

    def _answer(self, vendor: str, plan: str, ref: str, answer: list[str], *, late: bool):
        """What the vendor says back: a receipt, or the error a real adapter would raise."""
        kind = answer[0]
        if kind == "outage":
            raise TransientVendorError(f"{vendor} unreachable (outage)")
        if kind == "transient":
            raise TransientVendorError(f"{vendor} busy (HTTP 503), attempt {answer[1]}")
        if kind == "replay":  # the same key never sends twice: replay what happened
            _kind, outcome, known_ref, voided = answer
            if outcome == "failed":
                why = "the order was voided" if voided else REJECTIONS[vendor]
                raise PermanentVendorError(f"{vendor} refused: {why}")
            return Submission(vendor, known_ref)
        if plan == "rejected":
            raise PermanentVendorError(f"{vendor} refused: {REJECTIONS[vendor]}")
        if plan == "timeout":
            raise VendorOutcomeUnknown(f"{vendor} did not answer in time")
        if late:
            # The vendor sent it, but its answer came after our timeout: we cannot know.
            raise VendorOutcomeUnknown(f"{vendor} gave no answer within {self.timeout_s:g}s")
        return Submission(vendor, ref)

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

    def attempts(self, idempotency_key: str) -> int:
        """How many times this key was submitted (replays of a settled key included)."""
        return int(self.redis.hget(self._record_key(idempotency_key), "attempts") or 0)

    @property
    def outage(self) -> bool:
        return bool(self.redis.exists(self._outage_key))

    def set_outage(self, on: bool, *, ttl_s: int | None = None) -> None:
        if on:
            self.redis.set(self._outage_key, "1", ex=ttl_s)
        else:
            self.redis.delete(self._outage_key)

    # -- internals

    def _record_key(self, idempotency_key: str) -> str:
        return f"{self.prefix}send:{idempotency_key}"

    def _record(self, record: str, outcome: str, fields: dict[str, str], *, sent: bool) -> bool:
        # One script: Redis dying half-way must not leave an outcome without its send count.
        args: list[str] = [outcome, "1" if sent else "0"]
        for key, value in fields.items():
            args.extend((key, value))
        return bool(self._settle_script(keys=[record], args=args))

    def _latency(self) -> bool:
        """Wait as long as the vendor takes, but no longer than our timeout; True when the
        answer would have come too late (the call then ends in VendorOutcomeUnknown)."""
        if self.rates.latency_ms <= 0:
            return False
        latency_s = self.rates.latency_ms * random.uniform(0.5, 1.5) / 1000
        time.sleep(min(latency_s, self.timeout_s))
        return latency_s > self.timeout_s
