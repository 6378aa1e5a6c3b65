"""Send-action jobs: one pydantic model per action, joined in a discriminated union.

Every field is bounded. ``parse_job`` turns a validation failure into one InvalidRequest
whose message names each bad field by its path (``recipient.country: ...``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from shared.errors import CreditsError, InvalidRequest
from shared.pricing import ACTIONS, normalize_country

MAX_JOB_BYTES = 64 * 1024  # a message larger than this is refused before parsing

JobId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@/-]+$")]
RefId = Annotated[str, Field(min_length=1, max_length=128)]
Line = Annotated[str, Field(min_length=1, max_length=100)]
OptLine = Annotated[str | None, Field(default=None, max_length=100)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, frozen=True)

    @model_validator(mode="after")
    def _no_nul(self) -> Self:
        # PostgreSQL text cannot hold NUL; refuse it here, naming the field, not in the DB.
        for name, value in self:
            if isinstance(value, str) and "\x00" in value:
                raise ValueError(f"{name} must not contain NUL characters")
        return self


class Address(_Strict):
    name: Line
    company: OptLine = None
    line1: Line
    line2: OptLine = None
    city: Annotated[str, Field(min_length=1, max_length=64)]
    region: Annotated[str | None, Field(default=None, max_length=64)] = None
    postal_code: Annotated[str | None, Field(default=None, max_length=16)] = None
    country: Annotated[str, Field(min_length=2, max_length=64)]

    @field_validator("country")
    @classmethod
    def _country(cls, value: str) -> str:
        try:
            return normalize_country(value)
        except CreditsError as exc:
            raise ValueError(str(exc)) from None


class _JobBase(_Strict):
    job_id: JobId
    member_id: Annotated[StrictInt, Field(gt=0, le=2**62)]
    flow_id: RefId | None = None
    step_id: RefId | None = None
    source: Literal["flow", "instant"] = "flow"


class HandwrittenNote(_JobBase):
    action: Literal["handwritten_note"]
    message: Annotated[str, Field(min_length=1, max_length=1000)]
    recipient: Address
    return_address: Address


class Postcard(_JobBase):
    action: Literal["postcard"]
    message: Annotated[str, Field(min_length=1, max_length=500)]
    address_kind: Literal["company", "home"] = "company"
    recipient: Address


class GiftCard(_JobBase):
    action: Literal["gift_card"]
    brand: Annotated[str, Field(min_length=1, max_length=64)]
    # Whole US dollars; the catalog's allowed set is checked when the job is priced.
    denomination: Annotated[StrictInt, Field(gt=0, le=10_000)]
    message: Annotated[str | None, Field(default=None, max_length=500)] = None
    recipient: Address
    return_address: Address


class Email(_JobBase):
    action: Literal["email"]
    to: Annotated[str, Field(min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")]
    subject: Annotated[str, Field(min_length=1, max_length=200)]
    body: Annotated[str, Field(min_length=1, max_length=20_000)]


class Task(_JobBase):
    action: Literal["task"]
    title: Annotated[str, Field(min_length=1, max_length=200)]
    notes: Annotated[str | None, Field(default=None, max_length=2000)] = None


class LinkedIn(_JobBase):
    action: Literal["linkedin"]
    profile_url: Annotated[str, Field(min_length=1, max_length=300)]
    message: Annotated[str | None, Field(default=None, max_length=300)] = None


class AcceptLead(_JobBase):
    action: Literal["accept_lead"]
    lead_id: RefId


Job = Annotated[
    HandwrittenNote | Postcard | GiftCard | Email | Task | LinkedIn | AcceptLead,
    Field(discriminator="action"),
]
_JOB = TypeAdapter(Job)


def describe(exc: ValidationError) -> str:
    """One line naming every bad field, e.g. ``recipient.country: unknown country 'Narnia'``."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = list(err["loc"])
        if loc and loc[0] in ACTIONS:
            loc = loc[1:]  # the union's tag, not a field
        where = ".".join(str(p) for p in loc) or "job"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "union_tag_invalid":
            where = "action"
            message = (
                f"unknown action {err['input'].get('action')!r}; expected one of "
                + ", ".join(ACTIONS)
            )
        elif err["type"] == "union_tag_not_found":
            where, message = "action", "missing; expected one of " + ", ".join(ACTIONS)
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def parse_job(data: Any) -> Job:
    """Validate a job (a dict or a model); raise InvalidRequest naming the bad fields."""
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    if not isinstance(data, dict):
        raise InvalidRequest(f"job must be a JSON object, got {type(data).__name__}")
    if len(json.dumps(data, default=str)) > MAX_JOB_BYTES:
        raise InvalidRequest(f"job is larger than {MAX_JOB_BYTES} bytes")
    try:
        return _JOB.validate_python(data)
    except ValidationError as exc:
        raise InvalidRequest(f"invalid job: {describe(exc)}") from None


def job_dict(job: Job) -> dict[str, Any]:
    return job.model_dump(mode="json", exclude_none=True)


def content_hash(job: Job) -> str:
    """Identity of a job's content: the same job_id with another hash is a conflict."""
    blob = json.dumps(job_dict(job), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def price_fields(job: Job) -> dict[str, Any]:
    """What pricing needs from a job: the recipient's country and any gift denomination."""
    recipient = getattr(job, "recipient", None)
    return {
        "country": recipient.country if recipient else None,
        "denomination": getattr(job, "denomination", None),
    }
