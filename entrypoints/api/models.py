"""Request and response bodies of the HTTP API, as the OpenAPI document shows them.

Requests are strict: unknown fields are refused, so a typo (``ammount``) is an error and
not a silent default. Credits are whole numbers, bounded like the ledger's.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

Id = Annotated[StrictInt, Field(gt=0, le=2**63 - 1)]
Credits = Annotated[StrictInt, Field(ge=0, le=10**12)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class AllocationRequest(_Request):
    """Move credits to a workspace (from the account pool) or a member (from their
    workspace's pool), or back. Name one target and one of ``amount`` or ``set``."""

    workspace_id: Id | None = None
    member_id: Id | None = None
    amount: Annotated[StrictInt, Field(ge=-(10**12), le=10**12)] | None = Field(
        default=None, description="Credits to move down; negative reclaims. Not 0."
    )
    set_to: Credits | None = Field(
        default=None, alias="set", description="Move whatever makes the target's balance this."
    )

    @model_validator(mode="after")
    def _one_of_each(self) -> Self:
        if (self.workspace_id is None) == (self.member_id is None):
            raise ValueError("give exactly one of workspace_id or member_id")
        if (self.amount is None) == (self.set_to is None):
            raise ValueError("give exactly one of amount or set")
        if self.amount == 0:
            raise ValueError("amount 0 moves nothing: give a non-zero amount")
        return self

    @property
    def target(self) -> tuple[str, int]:
        if self.workspace_id is not None:
            return "workspace", self.workspace_id
        return "member", self.member_id  # type: ignore[return-value]


class TopupRequest(_Request):
    account_id: Id
    amount: Annotated[StrictInt, Field(gt=0, le=10**12)]


class Target(BaseModel):
    kind: Literal["workspace", "member", "account"]
    id: int


class TransferOut(BaseModel):
    transaction_id: int | None = Field(description="None when nothing had to move.")
    kind: str
    amount: int
    from_wallet_id: int | None
    to_wallet_id: int | None
    replayed: bool = Field(description="True when the Idempotency-Key replayed a first result.")
    available_after: dict[str, int] = Field(description="Wallet id -> available right after.")
    target: Target


class CreditsOut(BaseModel):
    available: int
    held: int
    total: int


class TokenOut(BaseModel):
    id: int
    name: str


class MemberOut(BaseModel):
    id: int
    name: str
    role: Literal["owner", "admin", "member"]
    workspace_id: int
    workspace: str
    account_id: int
    account: str


class Me(BaseModel):
    kind: Literal["member", "support"]
    token: TokenOut
    member: MemberOut | None = None
    credits: CreditsOut | None = None


class Balance(BaseModel):
    kind: str
    id: int
    name: str
    wallet_id: int
    available: int
    held: int
    total: int


class MemberBalance(Balance):
    role: str


class WorkspaceBalance(Balance):
    members: list[MemberBalance]


class Tree(BaseModel):
    account: Balance
    workspaces: list[WorkspaceBalance]
    totals: dict[str, int]


class HistoryEntry(BaseModel):
    entry_id: int
    transaction_id: int
    kind: str
    bucket: str
    amount: int
    balance_after: int
    job_id: str | None
    actor: str
    by: str
    at: str


class HistoryPage(BaseModel):
    kind: str
    id: int
    wallet_id: int
    entries: list[HistoryEntry]
    next_before: int | None = Field(description="Pass as ?before= for the next page.")


class JobRow(BaseModel):
    job_id: str
    member_id: int
    action: str
    status: str
    cost: int
    flow_id: str | None
    attempts: int
    created_at: str
    updated_at: str
    last_error: str | None
    cursor: int


class JobPage(BaseModel):
    jobs: list[JobRow]
    next_before: int | None = Field(description="Pass as ?before= for the next page.")


class JobReportOut(BaseModel):
    job_id: str
    member_id: int
    action: str
    status: str
    final: bool
    cost: int
    catalog_version: str
    attempts: int
    flow_id: str | None
    step_id: str | None
    source: str
    vendor_ref: str | None
    key_id: str | None
    last_error: str | None
    created_at: str | None
    updated_at: str | None
    hold: dict[str, Any] | None
    history: list[dict[str, Any]]


class JobAccepted(BaseModel):
    job_id: str
    member_id: int
    status: str = Field(description="'queued', or the job's status when it was already sent.")
    replayed: bool = Field(description="True when this member already sent this job_id.")
    href: str = Field(description="Where to read the job.")
