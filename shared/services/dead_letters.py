"""Dead letters: messages the workers could not act on, kept with their reason.

Nobody is charged for a dead letter. The raw bytes are kept exactly as they arrived, next
to a readable (escaped) copy, so ops can see what was sent and by whom.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select

from shared.db import Database
from shared.models import DeadLetter, utcnow
from shared.services.auth import SUPPORT, Actor, require_support

MAX_REASON_LEN = 1000
MAX_DEAD_LETTER_BODY = 64 * 1024


def printable(raw: str | bytes) -> str:
    """Text any database can store: valid UTF-8 as is, anything else (or a NUL) escaped."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return repr(raw)
    return raw if "\x00" not in raw else repr(raw)


def _short(value: object, limit: int) -> str | None:
    return None if value is None else printable(str(value))[:limit]


def record_dead_letter(
    db: Database,
    reason: str,
    *,
    body: str | bytes | None = None,
    task_name: str | None = None,
    message_id: str | None = None,
    job_id: str | None = None,
    member_id: int | None = None,
    queue: str | None = None,
) -> int:
    raw = body.encode() if isinstance(body, str) else body
    with db.unit_of_work() as session:
        letter_id = session.execute(
            insert(DeadLetter)
            .values(
                reason=printable(reason)[:MAX_REASON_LEN],
                body=None if body is None else printable(body)[:MAX_DEAD_LETTER_BODY],
                raw=None if raw is None else raw[:MAX_DEAD_LETTER_BODY],
                task_name=_short(task_name, 200),
                message_id=_short(message_id, 200),
                job_id=_short(job_id, 128),
                member_id=member_id if isinstance(member_id, int) else None,
                queue=_short(queue, 200),
                received_at=utcnow(),
            )
            .returning(DeadLetter.id)
        ).scalar_one()
        session.commit()
        return letter_id


def dead_letters(db: Database, *, limit: int = 50, actor: Actor = SUPPORT) -> list[dict[str, Any]]:
    with db.unit_of_work() as session:
        require_support(session, actor, "read dead letters")
        rows = session.scalars(select(DeadLetter).order_by(DeadLetter.id.desc()).limit(limit))
        return [
            {
                "id": r.id,
                "reason": r.reason,
                "job_id": r.job_id,
                "member_id": r.member_id,
                "queue": r.queue,
                "task_name": r.task_name,
                "message_id": r.message_id,
                "received_at": r.received_at.isoformat(),
            }
            for r in rows
        ]
