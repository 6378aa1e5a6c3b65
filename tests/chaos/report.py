"""The checks of a chaos run, read from PostgreSQL, the outcome stream and the stub
vendor's records after the settle time, and the table they make.

Done when (issue #13): no accepted job missing, no worker exit the test did not cause,
no wrongful refund, and the books sound: per member balance + captured + held == funded,
reconcile OK, no job captured twice (and each completed job sent once by the vendor), one
final event per final job. On either broker a missing job fails the run: with Redis, a
message a worker popped but had not yet recorded as unacked (kombu#305) is re-sent from
the intake outbox.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bench.stack import CREDITS_PER_MEMBER
from shared.adapters.redis_client import make_redis
from shared.db import Database
from shared.models import FINAL_JOB_STATUSES, Hold, Job, LedgerTransaction, Member, Wallet
from shared.services.reconcile import reconcile
from shared.services.recovery import vendor_key
from worker.fulfilment import make_provider

FINAL = {s.value for s in FINAL_JOB_STATUSES}
WOULD_DELIVER = {"delivered", "transient"}  # a transient plan delivers on a later attempt


def check(world: Any, run: Any) -> dict[str, Any]:
    db = Database(world.settings.database_url)
    try:
        return _check(world, run, db)
    finally:
        db.dispose()


def _check(world: Any, run: Any, db: Database) -> dict[str, Any]:
    settings = world.settings
    stub = make_provider(settings, make_redis(settings.vendor_store_url))
    with db.unit_of_work() as session:
        rows = {f"{j.member_id}:{j.job_id}": (j.status, j.cost)
                for j in session.scalars(select(Job))}  # fmt: skip
        wallets = dict(session.execute(
            select(Member.id, Wallet.available + Wallet.held)
            .join(Wallet, Wallet.id == Member.wallet_id).where(Member.id.in_(run.members))
        ).all())  # fmt: skip
        held = Counter(dict(session.execute(
            select(Member.id, func.sum(Hold.amount))
            .join(Member, Member.wallet_id == Hold.wallet_id)
            .where(Hold.state == "held").group_by(Member.id)
        ).all()))  # fmt: skip
        captures = session.execute(
            select(LedgerTransaction.job_id, Member.id, LedgerTransaction.amount)
            .join(Member, Member.wallet_id == LedgerTransaction.debit_wallet_id)
            .where(LedgerTransaction.kind == "capture")
        ).all()  # fmt: skip
    reconciled = reconcile(db)

    accepted = set(run.accepted)
    missing_no_row = sorted(k for k in accepted if k not in rows)
    not_final = sorted(k for k in accepted if k in rows and rows[k][0] not in FINAL)
    final_keys = {k for k, (status, _) in rows.items() if status in FINAL}

    # Credits per member: what it was funded with is what it has, has on hold, or paid.
    captured: Counter[int] = Counter()
    captures_per_job: Counter[str] = Counter()
    for job_id, member_id, amount in captures:
        captured[member_id] += amount
        captures_per_job[f"{member_id}:{job_id}"] += 1
    paid: Counter[int] = Counter()
    for key, (status, cost) in rows.items():
        if status == "completed":
            paid[int(key.split(":", 1)[0])] += cost
    credit_problems = []
    for member in run.members:
        total = wallets.get(member, 0) + captured[member]
        if total != CREDITS_PER_MEMBER:
            credit_problems.append(f"member {member}: balance+held+captured {total}")
        if captured[member] != paid[member]:
            credit_problems.append(f"member {member}: captured {captured[member]}, "
                                   f"completed jobs cost {paid[member]}")  # fmt: skip
        if held[member] and all(status in FINAL for status, _ in rows.values()):
            credit_problems.append(f"member {member}: {held[member]} still held")
    double = sorted(k for k, n in captures_per_job.items() if n > 1)

    # One final event per final job, none for any other.
    events = Counter(
        f"{e['member_id']}:{e['job_id']}" for e in world.stack.events.all() if e["final"] == "1"
    )
    event_problems = sorted(k for k in final_keys if events[k] != 1)
    event_problems += sorted(k for k in events if k not in final_keys)

    # Wrongful refunds: a job that ended unpaid though the vendor would have delivered it
    # (its plan) or did (its records), unless the test itself froze its worker.
    excluded = set(run.notes.get("excluded", []))
    wrongful, excused = [], []
    for key in sorted(final_keys & accepted):
        status = rows[key][0]
        if status == "completed":
            continue
        member, job_id = key.split(":", 1)
        vkey = vendor_key(int(member), job_id)
        if stub.sends(vkey) or stub.planned_outcome(vkey) in WOULD_DELIVER:
            (excused if key in excluded else wrongful).append(f"{key} {status}")
    sends = {k: stub.sends(vendor_key(int(k.split(":", 1)[0]), k.split(":", 1)[1]))
             for k in final_keys}  # fmt: skip
    sends_unpaid = sorted(k for k in final_keys if rows[k][0] != "completed" and sends[k])
    # Each completed job was sent exactly once (this also proves the stub's records are
    # the ones the workers wrote, so the wrongful-refund check reads the right ones).
    paid_not_sent_once = sorted(k for k in final_keys
                                if rows[k][0] == "completed" and sends[k] != 1)  # fmt: skip

    exits = world.exits()
    checks = {
        "missing": not not_final and not missing_no_row,
        "credits": not credit_problems,
        "reconcile": reconciled.ok,
        "double_capture": not double and not paid_not_sent_once,
        "final_events": not event_problems,
        "wrongful_refunds": not wrongful,
        "worker_exits": exits["worker_exits_not_caused"] == 0,
    }
    statuses = Counter(rows[k][0] for k in accepted if k in rows)
    return {
        "scenario": run.scenario.name,
        "about": run.scenario.about,
        "broker": run.broker,
        "jobs": run.size.jobs,
        "published": len(accepted),
        "refused": len(run.refused),
        "final": sum(statuses[s] for s in FINAL),
        "parked": statuses["awaiting_credits"],
        "missing": len(missing_no_row) + len(not_final),
        "missing_no_row": missing_no_row,
        "missing_not_final": not_final,
        "statuses": dict(statuses),
        "credits_ok": checks["credits"],
        "credit_problems": credit_problems[:20],
        "reconcile_ok": reconciled.ok,
        "reconcile_problems": [p.as_dict() for p in reconciled.problems][:20],
        "double_capture": double,
        "completed_not_sent_once": paid_not_sent_once[:20],
        "event_problems": event_problems[:20],
        "wrongful_refunds": wrongful,
        "excused_refunds": excused,
        "sent_but_unpaid": sends_unpaid,
        **{k: v for k, v in exits.items()},
        "notes": run.notes,
        "refused_examples": [e for _, e in run.refused[:3]],
        "settle_s": round(run.settle_s, 1),
        "seconds": round(run.seconds, 1),
        "checks": checks,
        "ok": all(checks.values()),
    }


COLUMNS = ("broker", "scenario", "published", "final", "parked", "missing", "credits",
           "wrongful refunds", "worker exits (not caused)", "beat exits", "s", "ok")  # fmt: skip


def row(r: dict[str, Any]) -> list[str]:
    books = ("credits", "reconcile", "double_capture", "final_events")
    credits = "ok" if all(r["checks"].get(c) for c in books) else "FAIL"
    missing = str(r["missing"])
    exits = f"{r['worker_exits_not_caused']} ({r['worker_exits_caused']} killed by the test)"
    return [r["broker"], r["scenario"], str(r["published"]), str(r["final"]), str(r["parked"]),
            missing, credits, str(len(r["wrongful_refunds"])), exits,
            str(r.get("beat_exits", 0)), f"{r['seconds']:.0f}",
            "yes" if r["ok"] else "NO"]  # fmt: skip


def table(results: list[dict[str, Any]], markdown: bool = False) -> str:
    rows = [list(COLUMNS)] + [row(r) for r in results]
    if markdown:
        lines = ["| " + " | ".join(rows[0]) + " |", "|" + " --- |" * len(COLUMNS)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[1:]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def problems(r: dict[str, Any]) -> list[str]:
    """What failed, in a line each."""
    if "error" in r:
        return [f"{r['broker']} {r['scenario']}: the run broke: {r['error']}"]
    out = []
    for name, ok in r["checks"].items():
        if ok:
            continue
        detail = {
            "missing": f"no row {r['missing_no_row'][:5]}, not final {r['missing_not_final'][:5]}",
            "credits": r["credit_problems"][:5],
            "reconcile": r["reconcile_problems"][:3],
            "double_capture": (r["double_capture"][:5], r["completed_not_sent_once"][:5]),
            "final_events": r["event_problems"][:5],
            "wrongful_refunds": r["wrongful_refunds"][:5],
            "worker_exits": [(d["name"], d["code"]) for d in r["details"] if d["name"] != "beat"],
        }[name]
        out.append(f"{r['broker']} {r['scenario']}: {name}: {detail}")
    return out


def write_json(path: Path, results: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "results": results}, indent=2, default=str))
