"""Who is calling: a bearer token, or the Team page's session cookie.

- ``Authorization: Bearer credits_<id>_<secret>``: services and scripts. The token is
  checked against its stored hash on every request, so a revocation applies at once.
- The Team page logs in with a token once and then holds a signed session cookie
  (HttpOnly, SameSite=Strict; Secure over HTTPS). The cookie names the token, never its
  secret, and the token is checked again on every request. Every change made with the
  cookie needs the session's CSRF token in ``X-CSRF-Token``, and a cross-site ``Origin``
  is refused: a page elsewhere cannot act with a visitor's cookie.

The actor always comes from the credential, never from a request body.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request, Response, Security
from fastapi.security import APIKeyCookie, HTTPBearer
from itsdangerous import BadSignature

from entrypoints.api.state import Resources, resources
from shared.errors import NotAuthenticated, PermissionDenied
from shared.services import tokens
from shared.services.auth import Actor
from shared.services.tokens import Credential

SESSION_COOKIE = "credits_session"
LOGIN_COOKIE = "credits_login"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
NO_CREDENTIALS = (
    "no credentials: send 'Authorization: Bearer <API token>' "
    "(support makes tokens with `credits tokens create`)"
)

# Declared for the OpenAPI document; the header and cookie are read below, with errors
# that say what is wrong.
_bearer = HTTPBearer(auto_error=False, description="An API token: `credits tokens create`.")
_cookie = APIKeyCookie(
    name=SESSION_COOKIE,
    auto_error=False,
    description=f"The Team page's session (browsers); changes also need {CSRF_HEADER}.",
)


@dataclass(frozen=True)
class Caller:
    credential: Credential
    via: str  # "token" or "session"
    csrf: str | None = None

    @property
    def actor(self) -> Actor:
        return self.credential.actor

    @property
    def member_id(self) -> int | None:
        return self.credential.member_id


def caller(
    request: Request,
    res: Annotated[Resources, Depends(resources)],
    _token: Annotated[Any, Security(_bearer)] = None,
    _session: Annotated[Any, Security(_cookie)] = None,
) -> Caller:
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise NotAuthenticated("the Authorization header must be 'Bearer <API token>'")
        return Caller(tokens.verify(res.db, token.strip()), "token")
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        session = read_session(res, cookie)
        credential = tokens.credential_of(res.db, session["t"])
        if request.method not in SAFE_METHODS:
            check_csrf(request, session["c"])
        return Caller(credential, "session", session["c"])
    raise NotAuthenticated(NO_CREDENTIALS)


CallerDep = Annotated[Caller, Depends(caller)]
ResourcesDep = Annotated[Resources, Depends(resources)]


def read_session(res: Resources, cookie: str) -> dict[str, Any]:
    try:
        data = res.sessions.loads(cookie, max_age=res.settings.api_session_max_age_s)
    except BadSignature:  # includes SignatureExpired
        raise NotAuthenticated("the session has expired or is not valid: log in again") from None
    if not isinstance(data, dict) or not isinstance(data.get("t"), int) or "c" not in data:
        raise NotAuthenticated("the session is not valid: log in again")
    return data


def check_origin(request: Request) -> None:
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
        raise PermissionDenied(f"a request from another site ({origin}) may not use this session")


def check_csrf(request: Request, expected: str) -> None:
    """A change made with a cookie must carry the token only this site's pages know."""
    check_origin(request)
    presented = request.headers.get(CSRF_HEADER, "")
    if not presented or not hmac.compare_digest(presented.encode(), expected.encode()):
        raise PermissionDenied(f"missing or wrong {CSRF_HEADER} header: reload the page")


def secure_cookies(request: Request, res: Resources) -> bool:
    return res.settings.api_cookie_secure or request.url.scheme == "https"


def start_session(request: Request, response: Response, res: Resources, token_id: int) -> None:
    value = res.sessions.dumps({"t": token_id, "c": secrets.token_urlsafe(32)})
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=int(res.settings.api_session_max_age_s),
        httponly=True,
        samesite="strict",
        secure=secure_cookies(request, res),
        path="/",
    )


def end_session(request: Request, response: Response, res: Resources) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict",
                           secure=secure_cookies(request, res))  # fmt: skip
