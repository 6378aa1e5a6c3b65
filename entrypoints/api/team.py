"""The Team page: ``/team``, server-rendered, for admins and members.

- Owners, admins and support see the account pool, each workspace's team credits
  (unassigned in its pool, allocated to members) and every member's credits; a member
  sees only their own row.
- A number they may change is a button: click, type, Enter. The page's script posts
  ``/v1/allocations`` with ``set`` (one idempotency key per edit) and the session's CSRF
  token, then re-renders the rows from ``/team/rows``. A refusal shows under the number,
  and nothing changed.
- A badge shows the viewer's own credits, kept live by ``/v1/events``.
- Login: a token, exchanged once for a session cookie (see :mod:`entrypoints.api.auth`).
  A login link carries the token after ``#``, which browsers never send to a server, so
  it stays out of access logs; the login page's script posts it and drops it from the
  address bar.
"""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from entrypoints.api import auth, money
from entrypoints.api.auth import CSRF_HEADER, LOGIN_COOKIE, Caller, CallerDep, ResourcesDep
from entrypoints.api.problems import from_error
from entrypoints.api.state import Resources
from shared.errors import CreditsError, PermissionDenied
from shared.models import Role, Workspace
from shared.services import balances, directory, tokens
from shared.services.auth import can_manage_workspace

router = APIRouter(prefix="/team", include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).with_name("templates"))
LOGIN_COOKIE_MAX_AGE_S = 3600
AccountQuery = Annotated[int | None, Query(alias="account", gt=0, le=2**63 - 1)]


class Login(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=1, max_length=tokens.MAX_TOKEN_CHARS)


def page_caller(request: Request, res: ResourcesDep) -> Caller | None:
    """The session's caller, or None when there is no valid session (go log in)."""
    if not request.cookies.get(auth.SESSION_COOKIE):
        return None
    try:
        return auth.caller(request, res)
    except CreditsError:
        return None


PageCaller = Annotated[Caller | None, Depends(page_caller)]


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, viewer: PageCaller, res: ResourcesDep):
    if viewer is not None:
        return RedirectResponse("/team", status_code=303)
    nonce = secrets.token_urlsafe(32)
    response = templates.TemplateResponse(request, "login.html", {"csrf": nonce})
    response.set_cookie(LOGIN_COOKIE, nonce, max_age=LOGIN_COOKIE_MAX_AGE_S, httponly=True,
                        samesite="strict", secure=auth.secure_cookies(request, res),
                        path="/team")  # fmt: skip
    return response


@router.post("/login")
def login(body: Login, request: Request, res: ResourcesDep) -> JSONResponse:
    try:
        auth.check_origin(request)
        expected = request.cookies.get(LOGIN_COOKIE, "")
        presented = request.headers.get(CSRF_HEADER, "")
        if not expected or not hmac.compare_digest(presented.encode(), expected.encode()):
            raise PermissionDenied("the login form expired: reload the page and try again")
        credential = tokens.verify(res.db, body.token.strip())
    except CreditsError as exc:
        return from_error(request, exc)
    response = JSONResponse({"next": "/team"}, headers={"Cache-Control": "no-store"})
    auth.start_session(request, response, res, credential.token_id)
    response.delete_cookie(LOGIN_COOKIE, path="/team")
    return response


@router.post("/logout")
def logout(request: Request, caller: CallerDep, res: ResourcesDep) -> JSONResponse:
    response = JSONResponse({"next": "/team/login"})
    auth.end_session(request, response, res)
    return response


@router.get("", response_class=HTMLResponse)
def team_page(request: Request, viewer: PageCaller, res: ResourcesDep,
              account_id: AccountQuery = None):  # fmt: skip
    if viewer is None:
        return RedirectResponse("/team/login", status_code=303)
    context = view(res, viewer, account_id) | {"csrf": viewer.csrf}
    return templates.TemplateResponse(request, "team.html", context)


@router.get("/rows", response_class=HTMLResponse)
def team_rows(request: Request, caller: CallerDep, res: ResourcesDep,
              account_id: AccountQuery = None):  # fmt: skip
    return templates.TemplateResponse(request, "_rows.html", view(res, caller, account_id))


def view(res: Resources, caller: Caller, account_id: int | None) -> dict[str, Any]:
    """What the page shows this viewer: their own row, or the account they may read."""
    me = money.me(caller, res)
    context: dict[str, Any] = {"me": me, "account": None, "workspaces": [], "accounts": []}
    if me["kind"] == "member":
        member = me["member"]
        if member["role"] == Role.MEMBER:
            context["workspaces"] = [_own_row(me)]
            return context
        account_id = member["account_id"]
    if account_id is None:  # support: pick an account
        context["accounts"] = directory.list_accounts(res.db, actor=caller.actor)
        return context
    tree = balances.tree(res.db, account_id, actor=caller.actor)
    editable = _manageable(res, caller, account_id)
    for ws in tree["workspaces"]:
        ws["editable"] = ws["id"] in editable
        ws["allocated"] = sum(m["available"] + m["held"] for m in ws["members"])
        for m in ws["members"]:
            m["editable"] = ws["editable"]
    context["account"] = tree["account"] | {"totals": tree["totals"]}
    context["workspaces"] = tree["workspaces"]
    return context


def _own_row(me: dict[str, Any]) -> dict[str, Any]:
    member, credits = me["member"], me["credits"]
    row = {"id": member["id"], "name": member["name"], "role": member["role"], "editable": False,
           "available": credits["available"], "held": credits["held"]}  # fmt: skip
    return {"id": member["workspace_id"], "name": member["workspace"], "members": [row],
            "editable": False, "own_only": True}  # fmt: skip


def _manageable(res: Resources, caller: Caller, account_id: int) -> set[int]:
    """Workspaces whose pool and members this viewer may change (a hint for the page;
    the services decide)."""
    with res.db.unit_of_work() as session:
        workspaces = session.scalars(select(Workspace).where(Workspace.account_id == account_id))
        return {ws.id for ws in workspaces if can_manage_workspace(session, caller.actor, ws)}
