"""Errors as RFC 9457 problem details (``application/problem+json``).

Every refusal carries the same ``code`` and message (``detail``) as the CLI's ``--json``
error, so a script can switch from one to the other. The HTTP status follows the error
tree, most specific class first:

    NotAuthenticated     401  (with WWW-Authenticate: Bearer)
    PermissionDenied     403
    NotFound             404  (also a row of another account: the same answer as missing)
    IdempotencyConflict  409
    InsufficientCredits  409  the request is fine but the wallet's state refuses it: it can
                              succeed later, once credits are allocated. Not 402, which
                              HTTP reserves and clients treat as a payment prompt.
    HoldAlreadyResolved  409
    InvalidRequest       422  (400 when the body is not JSON at all)
    ServiceUnavailable   503  (with Retry-After): nothing was done, try again
    SchemaMissing        503
    VendorError          502
    anything else        500  logged with its traceback; the answer says nothing more
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException

from shared.errors import (
    CreditsError,
    HoldAlreadyResolved,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidRequest,
    NotAuthenticated,
    NotFound,
    PermissionDenied,
    SchemaMissing,
    ServiceUnavailable,
    VendorError,
)

log = logging.getLogger("credits.api")
MEDIA_TYPE = "application/problem+json"
RETRY_AFTER_S = 5
STATUS: dict[type[CreditsError], int] = {
    NotAuthenticated: 401,
    PermissionDenied: 403,
    NotFound: 404,
    IdempotencyConflict: 409,
    InsufficientCredits: 409,
    HoldAlreadyResolved: 409,
    InvalidRequest: 422,
    ServiceUnavailable: 503,
    SchemaMissing: 503,
    VendorError: 502,
}
TITLES = {
    "NotAuthenticated": "No valid API token or session",
    "PermissionDenied": "Not allowed for this role",
    "NotFound": "No such resource",
    "IdempotencyConflict": "Idempotency key reused with a different request",
    "InsufficientCredits": "Not enough credits",
    "HoldAlreadyResolved": "Hold already resolved",
    "InvalidRequest": "Invalid request",
    "ServiceUnavailable": "A service the request needs is not answering",
    "DatabaseUnavailable": "The database is not answering",
    "BrokerUnavailable": "The broker did not take the job",
    "SchemaMissing": "The database has not been migrated",
    "MethodNotAllowed": "Method not allowed",
    "InternalError": "Internal error",
}


class Problem(BaseModel):
    """RFC 9457 problem details, with the CLI's error code."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str | None = None


def status_of(exc: CreditsError | type[CreditsError]) -> int:
    """The HTTP status of an error (or error class): its most specific mapped ancestor's."""
    for cls in (exc if isinstance(exc, type) else type(exc)).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def problem(request: Request | None, status: int, code: str, detail: str, **extra: Any):
    """One problem+json response; ``extra`` adds members such as ``errors``."""
    body = {
        "type": f"/problems/{code}",
        "title": TITLES.get(code, HTTPStatus(status).phrase),
        "status": status,
        "detail": detail,
        "code": code,
        "instance": request.url.path if request is not None else None,
        **extra,
    }
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="credits", error="invalid_token"'
    if status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_S)
    return JSONResponse(body, status_code=status, headers=headers, media_type=MEDIA_TYPE)


def from_error(request: Request | None, exc: CreditsError) -> JSONResponse:
    extra: dict[str, Any] = {}
    if isinstance(exc, InsufficientCredits):
        extra = {"available": exc.available, "needed": exc.needed}
    return problem(request, status_of(exc), exc.code, str(exc), **extra)


def _field(loc: tuple[Any, ...]) -> str:
    """``("body", "postcard", "recipient", "country")`` -> ``recipient.country``."""
    from shared.pricing import ACTIONS

    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", *ACTIONS)]
    return ".".join(parts) or "body"


async def _on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    if any(e["type"] == "json_invalid" for e in exc.errors()):
        return problem(request, 400, "InvalidRequest", "the request body is not valid JSON")
    errors = [
        {"field": _field(tuple(e["loc"])), "message": e["msg"].removeprefix("Value error, ")}
        for e in exc.errors()
    ]
    # A missing or malformed header (Idempotency-Key) is a 400, as the IETF draft has it.
    status = 400 if any(e["loc"][:1] == ("header",) for e in exc.errors()) else 422
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return problem(request, status, "InvalidRequest", detail, errors=errors)


async def _on_credits_error(request: Request, exc: CreditsError) -> JSONResponse:
    if status_of(exc) >= 500 and not isinstance(exc, ServiceUnavailable | SchemaMissing):
        log.error("request %s %s failed: %s", request.method, request.url.path, exc.code)
    return from_error(request, exc)


async def _on_http(request: Request, exc: HTTPException) -> JSONResponse:
    code = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "InvalidRequest")
    detail = {404: f"no route {request.url.path!r}", 405: f"{request.method} is not allowed on "
              f"{request.url.path!r}"}.get(exc.status_code, str(exc.detail))  # fmt: skip
    response = problem(request, exc.status_code, code, detail)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _on_database(request: Request, exc: Exception) -> JSONResponse:
    # The driver's message can name hosts and users: log the kind, answer plainly.
    log.warning("database error on %s %s: %s", request.method, request.url.path,
                type(exc).__name__)  # fmt: skip
    return problem(request, 503, "DatabaseUnavailable",
                   "the database did not answer in time; nothing was done")  # fmt: skip


async def _on_redis(request: Request, exc: RedisError) -> JSONResponse:
    log.warning("Redis error on %s %s: %s", request.method, request.url.path, type(exc).__name__)
    return problem(request, 503, "ServiceUnavailable",
                   "the event store (Redis) did not answer; nothing was done")  # fmt: skip


async def _on_anything(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return problem(request, 500, "InternalError", "an unexpected error; it was logged")


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(CreditsError, _on_credits_error)
    app.add_exception_handler(HTTPException, _on_http)
    app.add_exception_handler(DBAPIError, _on_database)
    app.add_exception_handler(PoolTimeout, _on_database)
    app.add_exception_handler(RedisError, _on_redis)
    app.add_exception_handler(Exception, _on_anything)


def catalogue() -> list[dict[str, Any]]:
    """Every problem type this API answers with: served at ``/problems``."""
    from shared import errors

    found = []
    for name in TITLES:
        cls = getattr(errors, name, None)
        status = status_of(cls) if cls else {"MethodNotAllowed": 405}.get(name, 500)
        found.append({"type": f"/problems/{name}", "code": name, "title": TITLES[name],
                      "status": status})  # fmt: skip
    return found


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the problems an operation can answer with."""
    return {
        status: {
            "description": HTTPStatus(status).phrase,
            "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }
