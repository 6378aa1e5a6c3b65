"""Every row lock the domain takes, in one place (saleor's ``lock_objects.py``).

- a job: ``FOR UPDATE`` until commit, so a sweep and a worker never both act on it;
- wallets: ``FOR UPDATE`` in wallet-id order, so two transactions never wait on each
  other in opposite orders (no deadlocks);
- a batch for a sweep: ``FOR UPDATE SKIP LOCKED``, so two sweeps (or a sweep and a
  worker) never take the same row.

SQLite ignores ``FOR UPDATE``; there the ``BEGIN IMMEDIATE`` of every unit of work holds
the database's write lock instead (``shared.db``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from shared.errors import NotFound
from shared.models import Job, Wallet


def lock_job(session: Session, job_pk: int) -> Job:
    """The job row by primary key, held FOR UPDATE until commit and read fresh."""
    query = (
        select(Job)
        .where(Job.id == job_pk)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    job = session.scalar(query)
    if job is None:
        raise NotFound("job", job_pk)
    return job


def lock_wallets(session: Session, wallet_ids: Iterable[int]) -> dict[int, int]:
    """Lock wallets in id order; returns each one's available balance."""
    rows = session.execute(
        select(Wallet.id, Wallet.available)
        .where(Wallet.id.in_(sorted(set(wallet_ids))))
        .order_by(Wallet.id)
        .with_for_update()
    ).all()
    return {row.id: row.available for row in rows}


def claim_batch(session: Session, query: Select[Any]) -> list[Any]:
    """The rows of ``query`` that nobody else holds, locked until commit."""
    return list(session.scalars(query.with_for_update(skip_locked=True)))
