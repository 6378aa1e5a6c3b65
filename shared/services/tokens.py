"""API tokens: made by support, shown once, stored hashed, checked in constant time.

A token reads ``credits_<id>_<secret>``. The id finds the row; the secret is 256 random
bits, of which only the SHA-256 is stored, so a copy of the database lets nobody in.
A fast hash is enough for a secret this long (nobody can guess through 2**256); the
comparison is ``hmac.compare_digest``, and an unknown id is compared against a dummy
digest, so the time taken tells nothing about which part was wrong.

A token acts as its member, with the member's role as it is at each request: a role
change applies at once, and a deactivated member's tokens stop working. A token with no
member is support's, for ops tools. Revoking keeps the row for the audit trail.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, or_, select, update

from shared.db import Database
from shared.errors import InvalidRequest, NotAuthenticated, NotFound
from shared.models import ApiToken, Member, Workspace, utcnow
from shared.services.auth import SUPPORT, Actor, require_support
from shared.services.directory import clean_name, get_member

PREFIX = "credits_"
SECRET_BYTES = 32
MAX_TOKEN_NAME = 100
MAX_TOKEN_CHARS = 200
# last_used_at is written at most this often per token: a write on every request would
# cost more than the request itself.
TOUCH_EVERY_S = 60.0
_TOKEN = re.compile(rf"^{PREFIX}(?P<id>[1-9][0-9]{{0,17}})_(?P<secret>[A-Za-z0-9_-]{{32,100}})$")
_DUMMY_DIGEST = hashlib.sha256(b"no such token").hexdigest()
INVALID = "invalid API token: check that it was copied whole; tokens are shown once"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class NewToken:
    """A token just made: the only time its secret exists outside the caller's hands."""

    id: int
    name: str
    member_id: int | None
    token: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Credential:
    """Who a verified token speaks for."""

    token_id: int
    name: str
    member_id: int | None

    @property
    def actor(self) -> Actor:
        return SUPPORT if self.member_id is None else Actor(self.member_id)


def create_token(
    db: Database, *, member_id: int | None, name: str, actor: Actor = SUPPORT
) -> NewToken:
    """Make a token for an active member, or a support token when ``member_id`` is None."""
    name = clean_name(name, "token")
    if len(name) > MAX_TOKEN_NAME:
        raise InvalidRequest(f"token name is {len(name)} characters; the limit is {MAX_TOKEN_NAME}")
    secret = secrets.token_urlsafe(SECRET_BYTES)
    with db.unit_of_work() as session:
        require_support(session, actor, "make API tokens")
        if member_id is not None:
            member = get_member(session, member_id)
            if not member.active:
                raise InvalidRequest(f"member {member_id} is deactivated: it cannot have tokens")
        token_id = session.execute(
            insert(ApiToken)
            .values(name=name, member_id=member_id, secret_hash=digest(secret))
            .returning(ApiToken.id)
        ).scalar_one()
        session.commit()
    return NewToken(token_id, name, member_id, f"{PREFIX}{token_id}_{secret}")


def verify(db: Database, token: str) -> Credential:
    """The credential a presented token stands for, or NotAuthenticated."""
    well_formed = isinstance(token, str) and len(token) <= MAX_TOKEN_CHARS
    found = _TOKEN.match(token) if well_formed else None
    token_id = int(found["id"]) if found else 0
    with db.unit_of_work() as session:
        row = session.execute(_token_query(token_id)).one_or_none()
        expected = row.ApiToken.secret_hash if row is not None else _DUMMY_DIGEST
        presented = digest(found["secret"]) if found else _DUMMY_DIGEST
        # Always one comparison of two digests, whatever was wrong.
        if not hmac.compare_digest(presented, expected) or found is None or row is None:
            raise NotAuthenticated(INVALID)
        return _usable(session, row)


def credential_of(db: Database, token_id: int) -> Credential:
    """The credential of a token known by id (a Team page session), or NotAuthenticated."""
    with db.unit_of_work() as session:
        row = session.execute(_token_query(token_id)).one_or_none()
        if row is None:
            raise NotAuthenticated("the session's token no longer exists: log in again")
        return _usable(session, row)


def _token_query(token_id: int):
    return (
        select(ApiToken, Member.active)
        .outerjoin(Member, Member.id == ApiToken.member_id)
        .where(ApiToken.id == token_id)
    )


def _usable(session, row) -> Credential:
    token: ApiToken = row.ApiToken
    if token.revoked_at is not None:
        raise NotAuthenticated(f"API token {token.id} was revoked")
    if token.member_id is not None and not row.active:
        raise NotAuthenticated(f"API token {token.id} belongs to a deactivated member")
    now = utcnow()
    if token.last_used_at is None or now - token.last_used_at > timedelta(seconds=TOUCH_EVERY_S):
        # Conditional, so concurrent requests with one token write it once.
        cutoff = now - timedelta(seconds=TOUCH_EVERY_S)
        session.execute(
            update(ApiToken)
            .where(ApiToken.id == token.id)
            .where(or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at < cutoff))
            .values(last_used_at=now)
        )
        session.commit()
    return Credential(token.id, token.name, token.member_id)


def revoke(db: Database, token_id: int, *, actor: Actor = SUPPORT) -> dict[str, Any]:
    """Revoke a token at once; revoking it again changes nothing and says so."""
    with db.unit_of_work() as session:
        require_support(session, actor, "revoke API tokens")
        token = session.get(ApiToken, token_id, with_for_update=True)
        if token is None:
            raise NotFound("API token", token_id)
        replayed = token.revoked_at is not None
        if not replayed:
            token.revoked_at = datetime.now(UTC)
        session.commit()
        return {"id": token.id, "name": token.name, "member_id": token.member_id,
                "revoked_at": token.revoked_at.isoformat(), "replayed": replayed}  # fmt: skip


def list_tokens(
    db: Database, *, member_id: int | None = None, actor: Actor = SUPPORT
) -> list[dict[str, Any]]:
    """Every token (or one member's), newest first; never a secret or its hash."""
    with db.unit_of_work() as session:
        require_support(session, actor, "list API tokens")
        query = (
            select(ApiToken, Member.name, Member.role, Workspace.account_id)
            .outerjoin(Member, Member.id == ApiToken.member_id)
            .outerjoin(Workspace, Workspace.id == Member.workspace_id)
            .order_by(ApiToken.id.desc())
        )
        if member_id is not None:
            query = query.where(ApiToken.member_id == member_id)
        return [
            {
                "id": t.id,
                "name": t.name,
                "member_id": t.member_id,
                "member": member_name,
                "role": "support" if t.member_id is None else role,
                "account_id": account_id,
                "created_at": t.created_at.isoformat(),
                "last_used_at": t.last_used_at.isoformat() if t.last_used_at else None,
                "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None,
            }
            for t, member_name, role, account_id in session.execute(query)
        ]
