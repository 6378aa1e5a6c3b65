"""``/v1``: who am I, the account tree, allocations, top-ups, and a member's history.

Each operation calls one service with the caller's actor; the services apply the role
rules, so the API cannot allow what the CLI refuses. Money-moving requests need an
``Idempotency-Key`` header: a retry with the same key replays the first answer
(``Idempotent-Replayed: true``), and the same key with another body is a 409.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Response
from sqlalchemy import select

from entrypoints.api.auth import CallerDep, ResourcesDep
from entrypoints.api.models import (
    AllocationRequest,
    HistoryPage,
    Me,
    TopupRequest,
    TransferOut,
    Tree,
)
from entrypoints.api.problems import responses
from shared.client import request_resume
from shared.errors import InvalidRequest
from shared.models import Account, Member, Wallet, Workspace
from shared.services import balances, ledger
from shared.services.balances import MAX_HISTORY_PAGE
from shared.services.idempotency import MAX_KEY_LEN
from shared.services.ledger import Transfer

router = APIRouter(prefix="/v1", responses=responses(401, 503))
IdPath = Annotated[int, Path(gt=0, le=2**63 - 1)]
IdempotencyKey = Annotated[
    str,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=MAX_KEY_LEN + 2,
        description="Required. A retry with the same key changes nothing and replays the "
        "first answer; the same key with another body is refused (409).",
    ),
]


def idempotency_key(raw: str) -> str:
    """The key, also when sent as an RFC 8941 string (``"abc"``) as the IETF draft has it."""
    key = raw.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not key or len(key) > MAX_KEY_LEN:
        raise InvalidRequest(f"Idempotency-Key must be 1 to {MAX_KEY_LEN} characters")
    return key


def transfer_response(response: Response, transfer: Transfer, kind: str, target: int) -> dict:
    """201 for a new movement; 200 for a replay or when nothing had to move."""
    if transfer.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    moved = transfer.amount > 0 and not transfer.replayed
    response.status_code = 201 if moved else 200
    return transfer.as_dict() | {"target": {"kind": kind, "id": target}}


@router.get("/me", response_model=Me, summary="Who am I, with my credits")
def me(caller: CallerDep, res: ResourcesDep) -> dict[str, Any]:
    token = {"id": caller.credential.token_id, "name": caller.credential.name}
    if caller.member_id is None:
        return {"kind": "support", "token": token}
    with res.db.unit_of_work() as session:
        row = session.execute(
            select(Member, Workspace, Account, Wallet)
            .join(Workspace, Workspace.id == Member.workspace_id)
            .join(Account, Account.id == Workspace.account_id)
            .join(Wallet, Wallet.id == Member.wallet_id)
            .where(Member.id == caller.member_id)
        ).one()
    member, workspace, account, wallet = row
    return {
        "kind": "member",
        "token": token,
        "member": {"id": member.id, "name": member.name, "role": member.role,
                   "workspace_id": workspace.id, "workspace": workspace.name,
                   "account_id": account.id, "account": account.name},
        "credits": {"available": wallet.available, "held": wallet.held,
                    "total": wallet.available + wallet.held},
    }  # fmt: skip


@router.get(
    "/accounts/{account_id}/tree",
    response_model=Tree,
    summary="The account pool, each workspace pool and each member's credits",
    responses=responses(403, 404),
)
def account_tree(account_id: IdPath, caller: CallerDep, res: ResourcesDep) -> dict[str, Any]:
    return balances.tree(res.db, account_id, actor=caller.actor)


def moves_money(path: str, summary: str):
    """A POST that moves credits: 201 with the transfer, 200 on a replay."""
    return router.post(path, response_model=TransferOut, status_code=201, summary=summary,
                       responses=responses(400, 403, 404, 409, 422))  # fmt: skip


@moves_money("/allocations", "Allocate, reclaim, or set a workspace's or member's credits")
def allocate(body: AllocationRequest, key: IdempotencyKey, response: Response,
             caller: CallerDep, res: ResourcesDep) -> dict[str, Any]:  # fmt: skip
    kind, target = body.target
    transfer = ledger.allocate(
        res.db, kind, target, amount=body.amount, set_to=body.set_to, key=idempotency_key(key),
        actor=caller.actor, on_member_funded=lambda member: request_resume(res.settings, member),
    )  # fmt: skip
    return transfer_response(response, transfer, kind, target)


@moves_money("/topups", "Add purchased credits to an account pool (support only)")
def topup(body: TopupRequest, key: IdempotencyKey, response: Response,
          caller: CallerDep, res: ResourcesDep) -> dict[str, Any]:  # fmt: skip
    transfer = ledger.topup(res.db, body.account_id, body.amount, key=idempotency_key(key),
                            actor=caller.actor)  # fmt: skip
    return transfer_response(response, transfer, "account", body.account_id)


@router.get(
    "/members/{member_id}/history",
    response_model=HistoryPage,
    summary="A member's ledger entries, newest first, with who made each",
    responses=responses(403, 404, 422),
)
def member_history(
    member_id: IdPath,
    caller: CallerDep,
    res: ResourcesDep,
    limit: Annotated[int, Query(ge=1, le=MAX_HISTORY_PAGE)] = 50,
    before: Annotated[int | None, Query(gt=0, description="Page cursor: next_before.")] = None,
) -> dict[str, Any]:
    return balances.history(res.db, "member", member_id, limit=limit, before=before,
                            actor=caller.actor)  # fmt: skip
