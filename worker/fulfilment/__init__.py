"""The fulfilment provider: the interface the pipeline calls, and the one that ships.

A provider is chosen by ``CREDITS_PROVIDER``; only ``stub`` ships (:mod:`.stub`), and a
real adapter implements the same three calls. Every call is bounded by
``CREDITS_VENDOR_TIMEOUT_S``: a call that does not answer in time raises
VendorOutcomeUnknown, because the vendor may have acted on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from shared.config import Settings
from shared.schemas import Job


class VendorStatus(StrEnum):
    DELIVERED = "delivered"
    FAILED = "failed"
    PENDING = "pending"
    UNKNOWN = "unknown"  # the vendor has no record of this key


@dataclass(frozen=True)
class Submission:
    vendor: str
    ref: str


class FulfilmentProvider(Protocol):
    def submit(self, job: Job, *, idempotency_key: str) -> Submission:
        """Send the job. Raises TransientVendorError (retry), PermanentVendorError (refused)
        or VendorOutcomeUnknown (timed out: it may have been sent)."""

    def status(self, idempotency_key: str) -> VendorStatus:
        """What the vendor knows of a key. Raises TransientVendorError if unreachable."""

    def void(self, idempotency_key: str) -> VendorStatus:
        """Fence a key the vendor has no record of: from now on it can never send (a late
        submit is refused). Returns FAILED when voided, or the key's real status if a send
        got there first. Raises TransientVendorError if unreachable."""


def make_provider(settings: Settings, redis: Any) -> FulfilmentProvider:
    """The provider ``CREDITS_PROVIDER`` names, with its own store."""
    from worker.fulfilment.stub import StubProvider, StubRates

    factories = {
        "stub": lambda: StubProvider(
            redis,
            StubRates.from_settings(settings),
            prefix=settings.key_prefix,
            timeout_s=settings.vendor_timeout_s,
        )
    }
    return factories[settings.provider]()
