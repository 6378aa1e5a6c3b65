"""Settings: one class, read from ``CREDITS_*`` environment variables.

Validators reject nonsense at start-up with a message that names the variable, so a
typo in a deployment fails loudly before any credit moves.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Self

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from shared.errors import InvalidRequest

PositiveSeconds = Annotated[float, Field(gt=0, le=86_400)]
Rate = Annotated[float, Field(ge=0, le=1)]

FAULT_ARMING_PHRASE = "yes-kill-my-workers"
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "memory://")
_BROKER_SCHEMES = ("redis://", "rediss://", "memory://", "amqp://", "pyamqp://")


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
    key_prefix: str = Field(default="credits:", min_length=1, max_length=64)
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
    reconcile_every_s: PositiveSeconds = 300.0
    beat_lock_timeout_s: PositiveSeconds = 30.0

    # Observability.
    metrics_port: int = Field(default=0, ge=0, le=65_535)  # 0: no metrics server
    log_format: str = Field(default="text", pattern="^(text|json)$")

    # Fault injection, for the crash tests only. Both settings are needed: the point to
    # crash at, and FAULT_ARMED set to the exact phrase below, so that a stray variable in
    # production can never make a worker kill itself.
    fault_crash_at: str | None = Field(
        default=None,
        pattern="^(after_hold|after_vendor_accepted|before_capture|after_capture_before_event)$",
    )
    fault_crash_every: int = Field(default=10, ge=1, le=1_000_000)
    fault_armed: str | None = None

    # Fulfilment provider: only the stub ships; real adapters implement the same interface.
    provider: str = Field(default="stub", pattern="^(stub)$")
    vendor_timeout_s: PositiveSeconds = 30.0
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
                f"not a database URL: {value!r}; expected e.g. sqlite:///credits.db or "
                "postgresql://user@host/db"
            ) from None
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            raise ValueError(
                f"unsupported database {url.get_backend_name()!r}: use sqlite or postgresql"
            )
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if not value.startswith(_REDIS_SCHEMES):
            raise ValueError(f"not a Redis URL: {value!r}; expected redis://host:port/db")
        return value

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(_BROKER_SCHEMES):
            raise ValueError(f"not a broker URL: {value!r}; expected redis://host:port/db")
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
        if self.in_doubt_after_s <= self.job_lock_timeout_s + self.retry_backoff_max_s:
            # Otherwise the resolver could settle a job whose worker is still talking to the
            # vendor, or is waiting out a retry countdown with the hold kept on purpose.
            raise ValueError(
                "CREDITS_IN_DOUBT_AFTER_S must exceed CREDITS_JOB_LOCK_TIMEOUT_S + "
                "CREDITS_RETRY_BACKOFF_MAX_S"
            )
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
    def stream(self) -> str:
        return self.events_stream or f"{self.key_prefix}events"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, turning a validation failure into one clear error."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(_describe(err) for err in exc.errors())
        raise InvalidRequest(f"bad configuration: {problems}") from None


def _describe(err: dict) -> str:
    """Name the variable; a check across several settings names them in its message."""
    message = err["msg"].removeprefix("Value error, ")
    if not err["loc"]:
        return message
    return f"CREDITS_{'_'.join(str(p) for p in err['loc']).upper()}: {message}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
