"""The one replay rule: the loser of a race on a unique key replays the winner.

Every idempotent write in the domain (a keyed transfer, a hold, a recorded job) is a
``work(session)`` that first looks for an earlier result under its key and replays it,
and otherwise writes a row that a named UNIQUE constraint guards. Two requests with one
key at once can both miss the earlier result; the database then decides:

- the loser breaks the UNIQUE constraint at its INSERT, or
- the loser's conditional UPDATE waited on the winner's row lock and then found the
  credits spent (InsufficientCredits), although its own request was the winner's.

Either way it rolls back whole and runs ``work`` once more in a new transaction, which
finds the winner's committed row and replays it (or raises IdempotencyConflict when the
content differs, or the refusal again when it was a real one).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from functools import cache
from typing import TypeVar

from sqlalchemy import UniqueConstraint
from sqlalchemy.exc import IntegrityError

from shared.db import Database, UnitOfWork
from shared.errors import InsufficientCredits, InvalidRequest
from shared.models import Base

T = TypeVar("T")
MAX_KEY_LEN = 128


def check_key(key: str | None, what: str = "idempotency key") -> str | None:
    if key is None:
        return None
    if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY_LEN:
        raise InvalidRequest(f"{what} must be 1 to {MAX_KEY_LEN} characters, got {key!r}")
    return key


def request_hash(**fields: object) -> str:
    """The identity of a request's content: the same key with another hash is a conflict."""
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


@cache
def _sqlite_columns(constraint: str) -> str:
    """How SQLite names a broken UNIQUE constraint: ``table.col1, table.col2``. SQLite
    reports columns, not constraint names, so they come from the model metadata."""
    for table in Base.metadata.tables.values():
        for found in table.constraints:
            if isinstance(found, UniqueConstraint) and found.name == constraint:
                return ", ".join(f"{table.name}.{column.name}" for column in found.columns)
    raise ValueError(f"no UNIQUE constraint named {constraint!r} in the models")


def is_unique_violation(exc: IntegrityError, constraint: str) -> bool:
    """True when ``exc`` broke the named UNIQUE constraint, on PostgreSQL or SQLite."""
    diag = getattr(exc.orig, "diag", None)  # psycopg names the constraint
    if diag is not None and getattr(diag, "constraint_name", None):
        return diag.constraint_name == constraint
    return f"UNIQUE constraint failed: {_sqlite_columns(constraint)}" in str(exc.orig)


def run_idempotent(
    db: Database,
    constraint: str,
    work: Callable[[UnitOfWork], T],
    *,
    replay_refusals: bool = True,
) -> T:
    """Run ``work`` in a unit of work and commit; a loser of a race on ``constraint`` runs
    it once more, and replays the winner.

    ``replay_refusals``: also run once more after InsufficientCredits, which is how the
    loser of a same-key race on a wallet row sees the race. Pass False for keyless work,
    where a refusal can only be a real one.
    """
    retry_on: tuple[type[Exception], ...] = (IntegrityError,)
    if replay_refusals:
        retry_on += (InsufficientCredits,)
    try:
        return _commit(db, work)
    except retry_on as exc:
        if isinstance(exc, IntegrityError) and not is_unique_violation(exc, constraint):
            raise
    return _commit(db, work)


def _commit(db: Database, work: Callable[[UnitOfWork], T]) -> T:
    with db.unit_of_work() as session:
        result = work(session)
        session.commit()
        return result
