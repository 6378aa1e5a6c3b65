"""Settings: one class, read from ``CREDITS_*`` environment variables.

Validators reject nonsense at start-up with a message that names the variable, so a
typo in a deployment fails loudly before any credit moves.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Annotated, Literal, Self
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from shared.errors import ConfigurationError

PositiveSeconds = Annotated[float, Field(gt=0, le=86_400)]
Rate = Annotated[float, Field(ge=0, le=1)]

FAULT_ARMING_PHRASE = "yes-kill-my-workers"
CrashPoint = Literal[
    "after_hold", "after_vendor_accepted", "before_capture", "after_capture_before_event"
]
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "memory://")
_BROKER_SCHEMES = ("redis://", "rediss://", "memory://", "amqp://", "pyamqp://", "amqps://")
# A key id names a signing key in logs and on jobs; the secret never leaves the process.
_SIGNING_KEY = re.compile(r"^(?P<id>[A-Za-z0-9._-]{1,64}):(?P<secret>.{32,512})$")
MIN_SECRET_CHARS = 32
# Added to the broker's redelivery delay before the resolver may act on a job: clocks of
# two hosts and a sweep's own run time are not exact.
RESOLVER_MARGIN_S = 30.0


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***``: safe for logs and error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        if parts.username is None and "@" in url:
            # Not parsed as credentials (a typo such as "redis//:secret@host"): whatever
            # comes before the last "@" may be a password.
            return "***@" + url.rsplit("@", 1)[1]
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def parse_signing_keys(value: str, variable: str) -> dict[str, str]:
    """``id:secret[,id:secret...]`` -> {id: secret}; errors name the variable, not the secret."""
    keys: dict[str, str] = {}
    for n, item in enumerate(part.strip() for part in value.split(",")):
        found = _SIGNING_KEY.match(item)
        if found is None:
            raise ValueError(
                f"{variable} entry {n + 1} is not '<key id>:<secret>' with a key id of letters, "
                f"digits, '.', '_' or '-' and a secret of at least {MIN_SECRET_CHARS} characters"
            )
        keys[found["id"]] = found["secret"]
    return keys


def normalize_database_url(url: str) -> str:
    """Accept URLs as users write them and pick the driver we ship (psycopg 3).

    ``postgres://`` and ``postgresql://`` both become ``postgresql+psycopg://``; SQLite and
    explicit drivers pass through unchanged.
    """
    url = url.strip()
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CREDITS_", extra="ignore", frozen=True)

    # Storage and messaging.
    database_url: str = "sqlite:///credits.db"
    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str | None = None  # defaults to redis_url
    # RabbitMQ: declare the queues as quorum queues (replicated; for a cluster).
    quorum_queues: bool = False
    # Seconds a producer retries a publish while the broker is down, then BrokerUnavailable.
    publish_timeout_s: PositiveSeconds = 10.0
    key_prefix: str = Field(default="credits:", min_length=1, max_length=64, pattern=r"^\S+$")
    events_stream: str | None = None  # defaults to "<key_prefix>events"
    events_stream_maxlen: int = Field(default=1_000_000, ge=1_000)

    # Pricing.
    catalog_path: str | None = None  # a JSON catalog; the built-in one when unset
    accept_lead_credits: int | None = Field(default=None, ge=0, le=10_000)

    # Holds and locks.
    hold_ttl_s: PositiveSeconds = 900.0
    lock_timeout_s: PositiveSeconds = 10.0
    lock_blocking_timeout_s: PositiveSeconds = 5.0

    # Send pipeline.
    awaiting_credits_max_wait_s: PositiveSeconds = 86_400.0
    retry_max: int = Field(default=8, ge=0, le=50)
    retry_backoff_base_s: PositiveSeconds = 2.0
    retry_backoff_max_s: PositiveSeconds = 300.0
    task_time_limit_s: PositiveSeconds = 120.0
    visibility_timeout_s: PositiveSeconds = 3600.0
    restore_interval_s: PositiveSeconds = 10.0  # how often workers look for abandoned messages
    job_lock_timeout_s: PositiveSeconds = 90.0

    # Recovery sweeps (celery beat; one scheduler at a time through a Redis lock).
    sweep_batch: int = Field(default=200, ge=1, le=10_000)
    in_doubt_after_s: PositiveSeconds = 600.0  # a submitted job untouched this long is resolved
    stale_after_s: PositiveSeconds = 600.0  # a received/reserved job untouched this long is re-sent
    max_resends: int = Field(default=10, ge=1, le=1000)  # then a stuck job is given up
    resume_lease_s: PositiveSeconds = (
        60.0  # a re-sent parked job is not re-sent again for this long
    )
    resolve_every_s: PositiveSeconds = 30.0
    resume_every_s: PositiveSeconds = 15.0
    republish_every_s: PositiveSeconds = 60.0
    # The intake outbox (Redis broker only; kombu#305): a job whose task has not started
    # this long after send_action() is re-sent. None: the visibility timeout plus the
    # restore scan plus a margin, the longest a message a worker recorded can take to
    # come back (a queue drained slower than that only causes harmless duplicates).
    intake_after_s: PositiveSeconds | None = None
    intake_every_s: PositiveSeconds = 60.0
    reconcile_every_s: PositiveSeconds = 300.0
    beat_lock_timeout_s: PositiveSeconds = 30.0

    # Trust: producers sign every job; workers accept only jobs signed by a known key.
    job_signing_key: SecretStr | None = None  # "<key id>:<secret>"
    job_verify_keys: SecretStr | None = None  # more "id:secret" pairs still accepted

    # HTTP API and Team page (``credits serve``). The session secret signs the Team
    # page's cookies; unset, it is derived from CREDITS_JOB_SIGNING_KEY, which the API
    # needs anyway to sign the jobs it sends. Every API process must share it.
    api_session_secret: SecretStr | None = None
    api_session_max_age_s: PositiveSeconds = 8 * 3600.0
    # Mark cookies Secure even on plain HTTP (they always are when the request came
    # over HTTPS, e.g. through a proxy with --proxy-headers).
    api_cookie_secure: bool = False
    # Open event streams (SSE) per API process; one more is refused with 503.
    api_max_event_streams: int = Field(default=200, ge=1, le=10_000)

    # Observability.
    metrics_port: int = Field(default=0, ge=0, le=65_535)  # 0: no metrics server
    metrics_addr: str = "127.0.0.1"  # the metrics server's bind address
    log_format: Literal["text", "json"] = "text"

    # Fault injection, for the crash tests only. Both settings are needed: the point to
    # crash at, and FAULT_ARMED set to the exact phrase below, so that a stray variable in
    # production can never make a worker kill itself.
    fault_crash_at: CrashPoint | None = None
    fault_crash_every: int = Field(default=10, ge=1, le=1_000_000)
    fault_armed: str | None = None

    # Fulfilment provider: only the stub ships; real adapters implement the same interface.
    provider: Literal["stub"] = "stub"
    vendor_timeout_s: PositiveSeconds = 30.0
    # The stub is a separate vendor: its records live apart from the broker (its own
    # Redis DB or server), so a broker that loses data does not erase what was sent.
    stub_redis_url: str | None = None  # defaults to redis_url
    stub_seed: int = 0
    stub_delivered_rate: Rate = 0.90
    stub_rejected_rate: Rate = 0.05
    stub_transient_rate: Rate = 0.03
    stub_timeout_rate: Rate = 0.02
    stub_transient_attempts: int = Field(default=1, ge=1, le=20)
    stub_latency_ms: float = Field(default=20.0, ge=0, le=60_000)
    stub_pending_s: float = Field(default=5.0, ge=0, le=86_400)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        value = normalize_database_url(value)
        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError(
                f"not a database URL: {mask_url(value)!r}; expected e.g. sqlite:///credits.db "
                "or postgresql://user@host/db"
            ) from None
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            raise ValueError(
                f"unsupported database {url.get_backend_name()!r}: use sqlite or postgresql"
            )
        return value

    @field_validator("redis_url", "stub_redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(_REDIS_SCHEMES):
            raise ValueError(f"not a Redis URL: {mask_url(value)!r}; expected redis://host:port/db")
        return value

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(_BROKER_SCHEMES):
            raise ValueError(
                f"not a broker URL: {mask_url(value)!r}; expected amqp://user:password@host/vhost"
                " or redis://host:port/db"
            )
        return value

    @field_validator("api_session_secret")
    @classmethod
    def _session_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_SECRET_CHARS:
            raise ValueError(f"must be at least {MIN_SECRET_CHARS} characters")
        return value

    @field_validator("job_signing_key", "job_verify_keys")
    @classmethod
    def _keys(cls, value: SecretStr | None, info) -> SecretStr | None:
        if value is not None:
            parse_signing_keys(value.get_secret_value(), f"CREDITS_{info.field_name.upper()}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.lock_blocking_timeout_s > self.lock_timeout_s * 10:
            raise ValueError(
                "CREDITS_LOCK_BLOCKING_TIMEOUT_S is more than ten CREDITS_LOCK_TIMEOUT_S"
            )
        rates = (
            self.stub_delivered_rate
            + self.stub_rejected_rate
            + self.stub_transient_rate
            + self.stub_timeout_rate
        )
        if abs(rates - 1.0) > 1e-6:
            raise ValueError(
                f"the four CREDITS_STUB_*_RATE settings must add up to 1, not {rates:g}"
            )
        # A countdown or a running task that outlives the visibility timeout is redelivered
        # while it is still pending, and runs twice (kombu#337, celery#4400).
        longest = self.retry_backoff_max_s + self.task_time_limit_s + self.job_lock_timeout_s
        if self.visibility_timeout_s <= longest:
            raise ValueError(
                f"CREDITS_VISIBILITY_TIMEOUT_S ({self.visibility_timeout_s:g}) must exceed "
                "CREDITS_RETRY_BACKOFF_MAX_S + CREDITS_TASK_TIME_LIMIT_S + "
                f"CREDITS_JOB_LOCK_TIMEOUT_S ({longest:g})"
            )
        if self.job_lock_timeout_s <= self.vendor_timeout_s:
            raise ValueError("CREDITS_JOB_LOCK_TIMEOUT_S must exceed CREDITS_VENDOR_TIMEOUT_S")
        if self.task_time_limit_s <= self.vendor_timeout_s:
            raise ValueError("CREDITS_TASK_TIME_LIMIT_S must exceed CREDITS_VENDOR_TIMEOUT_S")
        # The resolver acts on a job only once no attempt can still come: each attempt
        # records until when it may run (job lock) or when its retry is due; the broker may
        # take redelivery_delay_s more to hand a lost worker's message to another worker.
        # Being idle for in_doubt_after_s comes on top, never instead.
        if self.in_doubt_after_s <= self.job_lock_timeout_s:
            raise ValueError("CREDITS_IN_DOUBT_AFTER_S must exceed CREDITS_JOB_LOCK_TIMEOUT_S")
        if self.fault_crash_at and self.fault_armed != FAULT_ARMING_PHRASE:
            raise ValueError(
                "CREDITS_FAULT_CRASH_AT is set but fault injection is not armed: it also needs "
                f"CREDITS_FAULT_ARMED={FAULT_ARMING_PHRASE!r} (tests only)"
            )
        return self

    @property
    def broker(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def broker_is_amqp(self) -> bool:
        return self.broker.startswith(("amqp://", "pyamqp://", "amqps://"))

    @property
    def intake_outbox(self) -> bool:
        """Producers record each job in Redis until a worker starts it: only a Redis broker
        can lose a message a worker popped (kombu#305); ``memory://`` pops nothing over a
        network, and RabbitMQ requeues what a dead consumer held."""
        return pops_messages(self.broker)

    @property
    def intake_after(self) -> float:
        """Seconds before the intake sweep re-sends a job whose task never started."""
        if self.intake_after_s is not None:
            return self.intake_after_s
        return self.visibility_timeout_s + self.restore_interval_s + RESOLVER_MARGIN_S

    @property
    def redelivery_delay_s(self) -> float:
        """The longest a broker takes to hand a lost worker's unacked message to another
        worker: Redis restores it after the visibility timeout (plus one restore scan);
        RabbitMQ requeues it when the connection dies, which a stopped worker's missed
        heartbeats reveal within two heartbeat intervals."""
        if self.broker_is_amqp:
            return 2 * BROKER_HEARTBEAT_S + RESOLVER_MARGIN_S
        return self.visibility_timeout_s + self.restore_interval_s + RESOLVER_MARGIN_S

    @property
    def vendor_store_url(self) -> str:
        return self.stub_redis_url or self.redis_url

    def signing_key(self) -> tuple[str, str] | None:
        """(key id, secret) that this process signs jobs with, if any."""
        if self.job_signing_key is None:
            return None
        ((key_id, secret),) = parse_signing_keys(
            self.job_signing_key.get_secret_value(), "CREDITS_JOB_SIGNING_KEY"
        ).items()
        return key_id, secret

    def verify_keys(self) -> dict[str, str]:
        """Every key a worker accepts: its own signing key plus CREDITS_JOB_VERIFY_KEYS."""
        keys = {}
        if self.job_verify_keys is not None:
            keys.update(
                parse_signing_keys(
                    self.job_verify_keys.get_secret_value(), "CREDITS_JOB_VERIFY_KEYS"
                )
            )
        own = self.signing_key()
        if own is not None:
            keys[own[0]] = own[1]
        return keys

    @property
    def stream(self) -> str:
        return self.events_stream or f"{self.key_prefix}events"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def pops_messages(broker_url: str) -> bool:
    """A Redis broker over the network: kombu pops, then records (kombu#305)."""
    return broker_url.startswith(("redis://", "rediss://"))


BROKER_HEARTBEAT_S = 30.0  # AMQP heartbeat: a stopped worker's connection dies in ~2x this


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, turning a validation failure into one clear error."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(_describe(err) for err in exc.errors())
        raise ConfigurationError(f"bad configuration: {problems}") from None


def _describe(err: dict) -> str:
    """Name the variable; a check across several settings names them in its message."""
    message = err["msg"].removeprefix("Value error, ")
    if not err["loc"]:
        return message
    return f"CREDITS_{'_'.join(str(p) for p in err['loc']).upper()}: {message}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
