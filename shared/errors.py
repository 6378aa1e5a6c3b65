"""The error tree of the credits domain.

Every error the domain raises on purpose is a :class:`CreditsError`. Names state the
rule that was broken, as TigerBeetle's result codes do::

    CreditsError
    ├── InvalidRequest            bad input: names the field and the value
    │   ├── UnknownCountry
    │   └── ConfigurationError    a setting is missing or wrong: names the variable
    ├── NotFound                  an account, workspace, member, wallet, hold or job
    ├── PermissionDenied          the actor's role does not allow the action
    │   ├── JobNotAuthentic       unsigned, unknown key or bad signature: nobody charged
    │   └── NotAuthenticated      no valid API token: unknown, revoked, or member deactivated
    ├── InsufficientCredits       available < amount; nothing changed
    ├── IdempotencyConflict       same key, different content
    ├── HoldAlreadyResolved       capture of a released hold, or the reverse
    ├── JobBusy                   another attempt of this job is running: try again later
    ├── SchemaMissing             the database has not been migrated
    ├── InvariantViolation        the ledger broke a rule it must never break
    ├── ServiceUnavailable        a server we need does not answer; nothing was done
    │   ├── DatabaseUnavailable
    │   └── BrokerUnavailable     the job was not accepted: send it again later
    └── VendorError               the fulfilment provider failed
        ├── TransientVendorError  try again later, keep the hold
        ├── PermanentVendorError  the vendor refused it: release the hold
        └── VendorOutcomeUnknown  timed out: it may or may not have been sent

Each error carries an ``exit_code`` for the CLI and a ``code`` that names it in JSON.
"""

from __future__ import annotations


class CreditsError(Exception):
    """Root of every error the domain raises on purpose."""

    exit_code = 1

    @property
    def code(self) -> str:
        return type(self).__name__

    def as_dict(self) -> dict[str, str]:
        return {"error": self.code, "message": str(self)}


class InvalidRequest(CreditsError):
    """The request itself is malformed: a field is missing, out of range or of the wrong kind."""

    exit_code = 2


class UnknownCountry(InvalidRequest):
    def __init__(self, country: str) -> None:
        super().__init__(
            f"unknown country {country!r}: use an ISO 3166-1 alpha-2 code such as 'US' or 'GB',"
            " or a common name such as 'United States'"
        )
        self.country = country


class ConfigurationError(InvalidRequest):
    """A setting is missing or makes no sense; the message names the variable to set."""


class NotFound(CreditsError):
    exit_code = 3

    def __init__(self, kind: str, key: object, hint: str | None = None) -> None:
        super().__init__(f"{kind} {key!r} does not exist" + (f" ({hint})" if hint else ""))
        self.kind = kind
        self.key = key


class PermissionDenied(CreditsError):
    exit_code = 4


class JobNotAuthentic(PermissionDenied):
    """A job without a valid producer signature: it charges nobody."""


class NotAuthenticated(PermissionDenied):
    """The caller has no valid credential: no token, an unknown or revoked one, a token
    whose member is deactivated, or an expired session. The HTTP API answers 401."""


class InsufficientCredits(CreditsError):
    exit_code = 5

    def __init__(self, wallet: str, available: int, needed: int) -> None:
        super().__init__(f"{wallet} has {available} credits available, {needed} needed")
        self.wallet = wallet
        self.available = available
        self.needed = needed


class IdempotencyConflict(CreditsError):
    """The same idempotency key (or job id) arrived with different content."""

    exit_code = 6


class HoldAlreadyResolved(CreditsError):
    """A hold resolves exactly once: capturing a released hold (or the reverse) is refused."""

    exit_code = 7

    def __init__(self, job_id: str, state: str, wanted: str) -> None:
        super().__init__(f"hold for job {job_id!r} is already {state}; cannot mark it {wanted}")
        self.job_id = job_id
        self.state = state
        self.wanted = wanted


class JobBusy(CreditsError):
    """An attempt of this job is running (its lease has not run out): the pipeline retries
    the message shortly. Two deliveries of one message never run side by side."""

    exit_code = 12


class SchemaMissing(CreditsError):
    exit_code = 8


class InvariantViolation(CreditsError):
    """A ledger invariant failed. The transaction that saw it is rolled back."""

    exit_code = 9


class ServiceUnavailable(CreditsError):
    """A server the request needs did not answer within its bound; nothing was done."""

    exit_code = 11


class DatabaseUnavailable(ServiceUnavailable):
    pass


class BrokerUnavailable(ServiceUnavailable):
    """The broker did not accept the job (it was down past the publish timeout): the job
    was not sent. Sending it again with the same job_id is safe."""

    exit_code = 13


class VendorError(CreditsError):
    exit_code = 10


class TransientVendorError(VendorError):
    """The vendor could not take the job now (outage, rate limit): retry, keep the hold."""


class PermanentVendorError(VendorError):
    """The vendor refused the job for good (bad address, unsupported card): release the hold."""


class VendorOutcomeUnknown(VendorError):
    """The call timed out or the reply was lost: the send may have happened. Never guess;
    the job stays ``submitted`` and the resolver asks the vendor's ``status`` later."""
