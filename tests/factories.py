"""Factories: build a funded account tree in one call."""

from __future__ import annotations

from dataclasses import dataclass

from shared.db import Database
from shared.services import directory, ledger


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
    account = directory.create_account(db, "Acme")
    if account_credits:
        ledger.topup(db, account.id, account_credits)
    workspace = directory.create_workspace(db, account.id, "Sales")
    member = directory.add_member(db, workspace.id, name, role=role)
    if workspace_credits + member_credits:
        ledger.allocate(db, "workspace", workspace.id, amount=workspace_credits + member_credits)
    if member_credits:
        ledger.allocate(db, "member", member.id, amount=member_credits)
    return Tree(account.id, workspace.id, member.id)


# Job payloads, as a flow engine would send them.
ADDRESS = {"name": "Jane Doe", "line1": "1 Main St", "city": "Springfield", "country": "US"}


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
