"""Jobs belong to their member; keys belong to their account; signed, retried and kept.

- ``jobs``: unique on (member_id, job_id) instead of job_id alone, so the same job id
  from two members is two jobs; the producer's key id; when the next attempt is due.
- ``holds``: unique on (wallet_id, job_id) for the same reason.
- ``ledger_transactions.idempotency_key``: existing keys are rewritten to carry their
  account (``<account id>:<kind>:<key>``), so one account's key cannot block another's.
- ``members.active``: deactivated members keep their history and cannot act.
- ``dead_letters``: the raw bytes, the queue and the member of a message kept.
- ``idempotent_requests``: keyed creates (accounts, workspaces, members) replay.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint("uq_jobs_job_id", type_="unique")
        batch_op.drop_index(batch_op.f("ix_jobs_member_id"))
        batch_op.create_unique_constraint("uq_jobs_member_id_job_id", ["member_id", "job_id"])
        batch_op.create_index(batch_op.f("ix_jobs_job_id"), ["job_id"], unique=False)
        batch_op.add_column(sa.Column("key_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("holds", schema=None) as batch_op:
        batch_op.drop_constraint("uq_holds_job_id", type_="unique")
        batch_op.create_unique_constraint("uq_holds_wallet_id_job_id", ["wallet_id", "job_id"])
        batch_op.create_index(batch_op.f("ix_holds_job_id"), ["job_id"], unique=False)
    with op.batch_alter_table("members", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("active", sa.Boolean(), server_default=sa.text("true"), nullable=False)
        )
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.add_column(sa.Column("member_id", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("queue", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("raw", sa.LargeBinary(), nullable=True))
    op.create_table(
        "idempotent_requests",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("scope", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotent_requests")),
        sa.UniqueConstraint("scope", "key", name="uq_idempotent_requests_scope_key"),
    )
    _scope_idempotency_keys()
    # Holds, captures and releases were recorded as support's; they are the pipeline's.
    op.execute(
        "UPDATE ledger_transactions SET actor = 'pipeline' "
        "WHERE kind IN ('hold', 'capture', 'release') AND actor = 'support'"
    )


# Each wallet's account: an account pool is its own; a workspace's or member's goes up.
_WALLET_ACCOUNT = """
    SELECT a.wallet_id AS wallet_id, a.id AS account_id FROM accounts a
    UNION ALL
    SELECT w.wallet_id, w.account_id FROM workspaces w
    UNION ALL
    SELECT m.wallet_id, w.account_id FROM members m JOIN workspaces w ON w.id = m.workspace_id
"""


def _scope_idempotency_keys() -> None:
    conn = op.get_bind()
    owners = dict(conn.execute(sa.text(_WALLET_ACCOUNT)).all())
    rows = conn.execute(
        sa.text(
            "SELECT id, idempotency_key, debit_wallet_id, credit_wallet_id "
            "FROM ledger_transactions WHERE idempotency_key IS NOT NULL"
        )
    ).all()
    for txn_id, key, debit, credit in rows:
        account = owners.get(credit) or owners.get(debit)
        if account is None or key.split(":", 1)[0].isdecimal():
            continue  # a system-only movement, or already scoped
        conn.execute(
            sa.text("UPDATE ledger_transactions SET idempotency_key = :key WHERE id = :id"),
            {"key": f"{account}:{key}", "id": txn_id},
        )


def downgrade() -> None:
    conn = op.get_bind()
    conn.execute(
        sa.text(
            "UPDATE ledger_transactions SET idempotency_key = "
            "substr(idempotency_key, instr(idempotency_key, ':') + 1) "
            "WHERE idempotency_key IS NOT NULL"
        )
        if conn.dialect.name == "sqlite"
        else sa.text(
            "UPDATE ledger_transactions SET idempotency_key = "
            "substring(idempotency_key from position(':' in idempotency_key) + 1) "
            "WHERE idempotency_key IS NOT NULL"
        )
    )
    op.drop_table("idempotent_requests")
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.drop_column("raw")
        batch_op.drop_column("queue")
        batch_op.drop_column("member_id")
    with op.batch_alter_table("members", schema=None) as batch_op:
        batch_op.drop_column("active")
    with op.batch_alter_table("holds", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_holds_job_id"))
        batch_op.drop_constraint("uq_holds_wallet_id_job_id", type_="unique")
        batch_op.create_unique_constraint("uq_holds_job_id", ["job_id"])
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("next_attempt_at")
        batch_op.drop_column("key_id")
        batch_op.drop_index(batch_op.f("ix_jobs_job_id"))
        batch_op.drop_constraint("uq_jobs_member_id_job_id", type_="unique")
        batch_op.create_index(batch_op.f("ix_jobs_member_id"), ["member_id"], unique=False)
        batch_op.create_unique_constraint("uq_jobs_job_id", ["job_id"])
