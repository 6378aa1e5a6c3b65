"""Factories: funded account trees, job payloads as flow engines send them, stub vendor
rates, signing keys, and reads of what the pipeline recorded. One place for each."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError

from shared.db import Database
from shared.models import Account, Job, Wallet
from shared.services import directory, ledger
from shared.services.jobs import JobView, Notify

# A test-only signing key; producers and workers of one test share it.
SIGNING_KEY = "test-key:" + "s" * 40
SIGNING_KEY_PAIR = ("test-key", "s" * 40)


@dataclass(frozen=True)
class Tree:
    account_id: int
    workspace_id: int
    member_id: int


def funded_member(
    db: Database,
    *,
    account_credits: int = 100,
    workspace_credits: int = 0,
    member_credits: int = 0,
    role: str = "member",
    name: str = "James",
) -> Tree:
    account = directory.create_account(db, "Acme", credits=account_credits)
    workspace = directory.create_workspace(db, account.id, "Sales")
    member = directory.add_member(db, workspace.id, name, role=role)
    if workspace_credits + member_credits:
        ledger.allocate(db, "workspace", workspace.id, amount=workspace_credits + member_credits)
    if member_credits:
        ledger.allocate(db, "member", member.id, amount=member_credits)
    return Tree(account.id, workspace.id, member.id)


def funded_members(db: Database, n: int, *, credits: int = 10_000) -> list[int]:
    """``n`` members of one account, each with ``credits``."""
    tree = funded_member(db, account_credits=n * credits, member_credits=credits)
    members = [tree.member_id]
    for i in range(1, n):
        member = directory.add_member(db, tree.workspace_id, f"Member {i}")
        ledger.allocate(db, "workspace", tree.workspace_id, amount=credits)
        ledger.allocate(db, "member", member.id, amount=credits)
        members.append(member.id)
    return members


# ---------------------------------------------------------------- stub vendor rates

RATES = ("delivered", "rejected", "transient", "timeout")
MIX = {"delivered": 0.70, "transient": 0.15, "rejected": 0.10, "timeout": 0.05}


def stub_rates(outcome: str | None = None, **shares: float) -> dict[str, float]:
    """Stub settings: every job ``outcome``, or the given shares (the rest delivered)."""
    if outcome is not None:
        shares = {outcome: 1.0}
    rates = {name: float(shares.get(name, 0.0)) for name in RATES}
    if outcome is None and "delivered" not in shares:
        rates["delivered"] = 1.0 - sum(rates.values())
    return {f"stub_{name}_rate": value for name, value in rates.items()}


def as_env(settings: dict[str, Any]) -> dict[str, str]:
    """Settings as the CREDITS_* environment of a worker process."""
    return {f"CREDITS_{k.upper()}": str(v) for k, v in settings.items()}


ALL_DELIVERED = stub_rates("delivered")
MIX_RATES = stub_rates(**MIX)

# ---------------------------------------------------------------- job payloads

ADDRESS = {"name": "Jane Doe", "line1": "1 Main St", "city": "Springfield", "country": "US"}
ABROAD = {"name": "Ann Smith", "line1": "2 High St", "city": "Leeds", "country": "United Kingdom"}


def note(job_id: str, member_id: int, **extra: object) -> dict:
    return {
        "job_id": job_id,
        "member_id": member_id,
        "action": "handwritten_note",
        "message": "Thanks for the call!",
        "recipient": ADDRESS,
        "return_address": ADDRESS,
        **extra,
    }


def postcard(job_id: str, member_id: int, **extra: object) -> dict:
    return {
        "job_id": job_id,
        "member_id": member_id,
        "action": "postcard",
        "message": "Hello!",
        "recipient": ADDRESS,
        **extra,
    }


def email(job_id: str, member_id: int, **extra: object) -> dict:
    return {
        "job_id": job_id,
        "member_id": member_id,
        "action": "email",
        "to": "lead@example.com",
        "subject": "Hi",
        "body": "Hello",
        **extra,
    }


def gift_card(job_id: str, member_id: int, denomination: int = 25, **extra: object) -> dict:
    return {
        "job_id": job_id,
        "member_id": member_id,
        "action": "gift_card",
        "brand": "Acme Coffee",
        "denomination": denomination,
        "recipient": ADDRESS,
        "return_address": ADDRESS,
        **extra,
    }


def mixed_job(rng: random.Random, job_id: str, member_id: int) -> dict:
    """A realistic job of any action, to any country, from a flow or an instant action."""
    action = rng.choice(
        ["handwritten_note", "postcard", "postcard", "gift_card", "email", "task", "accept_lead"]
    )
    base = {"flow_id": "flow-1", "step_id": f"step-{rng.randint(1, 5)}",
            "source": rng.choice(["flow", "instant"])}  # fmt: skip
    recipient = rng.choice([ADDRESS, ABROAD])
    if action == "handwritten_note":
        return note(job_id, member_id, recipient=recipient, **base)
    if action == "postcard":
        return postcard(job_id, member_id, recipient=recipient, **base)
    if action == "gift_card":
        return gift_card(job_id, member_id, rng.choice([5, 10, 25, 50]), recipient=recipient,
                         **base)  # fmt: skip
    if action == "email":
        return email(job_id, member_id, **base)
    if action == "task":
        return {"job_id": job_id, "member_id": member_id, "action": "task",
                "title": "Call Jane", **base}  # fmt: skip
    return {"job_id": job_id, "member_id": member_id, "action": "accept_lead",
            "lead_id": f"lead-{job_id}", **base}  # fmt: skip


def mixed_jobs(members: list[int], n: int, *, seed: int = 11, prefix: str = "job") -> list[dict]:
    rng = random.Random(seed)
    return [mixed_job(rng, f"{prefix}-{i}", rng.choice(members)) for i in range(n)]


# ---------------------------------------------------------------- jobs without a worker


def accepted_job(db: Database, payload: dict, *, notify: Notify | None = None) -> JobView:
    """Record, price and hold a job as the pipeline's first step does (no vendor call):
    ``submitted`` with its hold when the member can pay, else parked."""
    from shared.pricing import load_catalog
    from shared.schemas import parse_job
    from shared.services import jobs

    return jobs.accept(db, parse_job(payload), load_catalog(), hold_ttl_s=900.0,
                       max_wait_s=86_400.0, attempt_window_s=90.0, notify=notify)  # fmt: skip


# ---------------------------------------------------------------- what got recorded


def job_counts(db: Database) -> Counter:
    with db.unit_of_work() as session:
        rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    return Counter({status: n for status, n in rows})


def spent(db: Database) -> int:
    with db.unit_of_work() as session:
        return session.scalar(select(Wallet.available).where(Wallet.system_name == "spent"))


def message(job: object, *, key: tuple[str, str] = SIGNING_KEY_PAIR) -> dict:
    """The kwargs of a ``credits.send_action`` message, signed as a producer signs them."""
    from shared.signing import sign

    return {"job": job, "auth": sign(job, key)}


def recorded_job(
    db: Database, job: dict, *, status: str = "received", age_s: float = 0.0,
    key_id: str | None = SIGNING_KEY_PAIR[0],
) -> int:  # fmt: skip
    """A job row as a worker recorded it, ``age_s`` ago, with no message left to run it.

    Only for statuses that hold nothing (received, rejected, awaiting_credits, or a
    free job in any status): a hold is the pipeline's to take. Returns the row's id.
    """
    from datetime import timedelta

    from shared.models import JobTransition, utcnow
    from shared.pricing import load_catalog
    from shared.schemas import content_hash, job_dict, parse_job
    from shared.services import jobs

    spec = parse_job(job)
    priced = jobs.price(spec, load_catalog())
    at = utcnow() - timedelta(seconds=age_s)
    with db.unit_of_work() as session:
        row = Job(
            job_id=spec.job_id, member_id=spec.member_id, flow_id=spec.flow_id,
            step_id=spec.step_id, action=spec.action, source=spec.source,
            payload=job_dict(spec), content_hash=content_hash(spec), cost=priced.cost,
            catalog_version=priced.catalog_version, status=status, attempts=0, republished=0,
            key_id=key_id, created_at=at, updated_at=at,
        )  # fmt: skip
        session.add(row)
        session.flush()
        session.add(JobTransition(job_pk=row.id, to_status=status, at=at))
        session.commit()
        return row.id


def unique_violation(db: Database) -> IntegrityError:
    """A real IntegrityError on ``uq_accounts_wallet_id``: two accounts on one wallet."""
    with db.unit_of_work() as session:
        wallet_id = session.execute(
            insert(Wallet).values(kind="account", available=0, held=0).returning(Wallet.id)
        ).scalar_one()
        session.execute(insert(Account).values(name="A", wallet_id=wallet_id))
        try:
            session.execute(insert(Account).values(name="B", wallet_id=wallet_id))
        except IntegrityError as error:
            return error
    raise AssertionError("two accounts on one wallet were accepted")
