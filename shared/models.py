"""The schema: directory (accounts, workspaces, members), wallets, the ledger, holds and jobs.

Balances are integers. ``wallets.available`` and ``wallets.held`` are caches of the
append-only ``ledger_entries``; reconcile recomputes them. CHECK constraints repeat the
non-negativity invariant so that even a buggy caller cannot overdraw a wallet, and named
UNIQUE constraints make idempotency a property of the database, not of Python.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only autoincrements INTEGER PRIMARY KEY, so big ids are BIGINT on PostgreSQL alone.
BigId = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Timestamp(TypeDecorator[datetime]):
    """UTC timestamps that come back timezone-aware on both backends.

    SQLite stores naive text, so values are normalised to UTC on the way in and tagged
    as UTC on the way out; comparisons in Python then never mix naive and aware values.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Role(enum.StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"


class WalletKind(enum.StrEnum):
    EXTERNAL = "external"
    SPENT = "spent"
    ACCOUNT = "account"
    WORKSPACE = "workspace"
    MEMBER = "member"


SYSTEM_WALLETS = (WalletKind.EXTERNAL, WalletKind.SPENT)


class Bucket(enum.StrEnum):
    AVAILABLE = "available"
    HELD = "held"


class TxnKind(enum.StrEnum):
    TOPUP = "topup"
    ALLOCATE = "allocate"
    RECLAIM = "reclaim"
    HOLD = "hold"
    CAPTURE = "capture"
    RELEASE = "release"


class HoldState(enum.StrEnum):
    HELD = "held"
    CAPTURED = "captured"
    RELEASED = "released"


class Wallet(Base):
    __tablename__ = "wallets"
    __table_args__ = (
        CheckConstraint(
            "kind IN ('external', 'spent') OR (available >= 0 AND held >= 0)", name="non_negative"
        ),
        CheckConstraint("kind = 'member' OR held = 0", name="only_members_hold"),
        CheckConstraint(
            "kind IN ('external', 'spent', 'account', 'workspace', 'member')", name="kind"
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    # System wallets are found by name; the others through their owner row.
    system_name: Mapped[str | None] = mapped_column(String(16), unique=True)
    available: Mapped[int] = mapped_column(BigInteger, default=0)
    held: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"), unique=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)


class Workspace(Base):
    __tablename__ = "workspaces"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"), unique=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)


class Member(Base):
    __tablename__ = "members"
    __table_args__ = (CheckConstraint("role IN ('owner', 'admin', 'member')", name="role"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16), default=Role.MEMBER.value)
    wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"), unique=True)
    # A deactivated member keeps their history but can no longer act, spend or be given
    # credits; deactivating returns their available credits to the workspace pool.
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    created_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)


class LedgerTransaction(Base):
    """One balanced movement of credits; its entries sum to zero."""

    __tablename__ = "ledger_transactions"
    __table_args__ = (
        UniqueConstraint("idempotency_key", name="uq_ledger_transactions_idempotency_key"),
        CheckConstraint("amount >= 0", name="amount_non_negative"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    # Namespaced by operation ("topup:<key>"), so one key cannot collide across kinds.
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    amount: Mapped[int] = mapped_column(BigInteger)
    debit_wallet_id: Mapped[int | None] = mapped_column(ForeignKey("wallets.id"))
    credit_wallet_id: Mapped[int | None] = mapped_column(ForeignKey("wallets.id"))
    actor: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str | None] = mapped_column(String(128), index=True)
    memo: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)


class LedgerEntry(Base):
    """Append-only: a signed amount on one bucket of one wallet, with the balance after it."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        CheckConstraint("bucket IN ('available', 'held')", name="bucket"),
        CheckConstraint("amount <> 0", name="amount_non_zero"),
        Index("ix_ledger_entries_wallet_id_id", "wallet_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    transaction_id: Mapped[int] = mapped_column(ForeignKey("ledger_transactions.id"), index=True)
    wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"))
    bucket: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(BigInteger)
    balance_after: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)


class Hold(Base):
    """Credits reserved for one job. It resolves exactly once: captured or released."""

    __tablename__ = "holds"
    __table_args__ = (
        # A job is its member's: the same job_id from two members is two jobs, two holds.
        UniqueConstraint("wallet_id", "job_id", name="uq_holds_wallet_id_job_id"),
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("state IN ('held', 'captured', 'released')", name="state"),
        Index("ix_holds_state_expires_at", "state", "expires_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[str] = mapped_column(String(128), index=True)
    wallet_id: Mapped[int] = mapped_column(ForeignKey("wallets.id"), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16), default=HoldState.HELD.value)
    created_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(Timestamp())
    resolved_at: Mapped[datetime | None] = mapped_column(Timestamp())


class Job(Base):
    """One send action, keyed by its member and the producer's ``job_id``."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("member_id", "job_id", name="uq_jobs_member_id_job_id"),
        CheckConstraint("cost >= 0", name="cost_non_negative"),
        Index("ix_jobs_status_updated_at", "status", "updated_at"),
        # Final jobs whose outcome event is not yet confirmed: a small, shrinking set.
        Index(
            "ix_jobs_unnotified",
            "updated_at",
            postgresql_where=text("notified_at IS NULL"),
            sqlite_where=text("notified_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[str] = mapped_column(String(128), index=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"))
    flow_id: Mapped[str | None] = mapped_column(String(128))
    step_id: Mapped[str | None] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(String(16), default="flow")
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    content_hash: Mapped[str] = mapped_column(String(64))
    cost: Mapped[int] = mapped_column(Integer)
    catalog_version: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # The id of the producer key that signed the job (``CREDITS_JOB_SIGNING_KEY``).
    key_id: Mapped[str | None] = mapped_column(String(64))
    # When the next attempt of a retried job is due; the resolver leaves the job alone
    # until then, plus the longest redelivery delay.
    next_attempt_at: Mapped[datetime | None] = mapped_column(Timestamp())
    # Times the re-publish sweep re-sent this job; past a limit the job is given up on.
    republished: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    vendor_ref: Mapped[str | None] = mapped_column(String(128))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)
    wait_expires_at: Mapped[datetime | None] = mapped_column(Timestamp())
    # Set once the final outcome event is known to be on the stream (see the notify sweep).
    notified_at: Mapped[datetime | None] = mapped_column(Timestamp())


class JobStatus(enum.StrEnum):
    RECEIVED = "received"
    RESERVED = "reserved"
    AWAITING_CREDITS = "awaiting_credits"
    SUBMITTED = "submitted"
    COMPLETED = "completed"
    REFUNDED = "refunded"
    REJECTED = "rejected"
    EXPIRED = "expired"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in FINAL_JOB_STATUSES


# The one definition of "final": no step, sweep or redelivery changes these again.
FINAL_JOB_STATUSES = frozenset(
    {
        JobStatus.COMPLETED,
        JobStatus.REFUNDED,
        JobStatus.REJECTED,
        JobStatus.EXPIRED,
        JobStatus.CANCELLED,
    }
)


class JobTransition(Base):
    """The history of a job's states, one row per change."""

    __tablename__ = "job_transitions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_pk: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    from_status: Mapped[str | None] = mapped_column(String(32))
    to_status: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(String(1000))
    at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)


class DeadLetter(Base):
    """A message the worker could not act on, kept with its reason; nobody was charged."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    reason: Mapped[str] = mapped_column(String(1000))
    task_name: Mapped[str | None] = mapped_column(String(200))
    message_id: Mapped[str | None] = mapped_column(String(200))
    job_id: Mapped[str | None] = mapped_column(String(128), index=True)
    member_id: Mapped[int | None] = mapped_column(BigInteger)
    queue: Mapped[str | None] = mapped_column(String(200))
    body: Mapped[str | None] = mapped_column(Text)  # readable text, escaped if need be
    raw: Mapped[bytes | None] = mapped_column(LargeBinary)  # the bytes exactly as received
    received_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)


class IdempotentRequest(Base):
    """The result of a keyed request that is not a ledger movement (creating an account, a
    workspace or a member): a retry with the same key replays it instead of creating a
    second one. Keys are scoped (``account:7``, ``support``), like the ledger's."""

    __tablename__ = "idempotent_requests"
    __table_args__ = (UniqueConstraint("scope", "key", name="uq_idempotent_requests_scope_key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    scope: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(128))
    request_hash: Mapped[str] = mapped_column(String(64))
    result: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)


class ApiToken(Base):
    """A bearer token for the HTTP API and the Team page: a member's, or support's.

    Only a SHA-256 of the secret is stored; the secret is shown once, when the token is
    made. The token carries its member's role (read from the member at each request), so
    a role change or a deactivation takes effect at once; a revoked token stays, for the
    audit trail.
    """

    __tablename__ = "api_tokens"
    __table_args__ = (
        UniqueConstraint("secret_hash", name="uq_api_tokens_secret_hash"),
        CheckConstraint("length(secret_hash) = 64", name="secret_hash_sha256"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    # NULL: a support token (ops tools); otherwise the member the token acts as.
    member_id: Mapped[int | None] = mapped_column(ForeignKey("members.id"), index=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(Timestamp(), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(Timestamp())
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp())
