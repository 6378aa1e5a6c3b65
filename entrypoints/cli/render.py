"""Tables and trees for people. Every user-supplied string is shown as plain text (never
parsed as markup) with control characters escaped, so a name cannot break the output or
drive the terminal. Piped output is never cut: ids and times stay whole for copying."""

from __future__ import annotations

import json
import sys
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

WIDE = 10_000  # a pipe has no width: do not wrap or cut anything


def console() -> Console:
    return Console(width=None if sys.stdout.isatty() else WIDE, highlight=False)


def safe(value: object) -> Text:
    """A value as inert text: control characters shown as escapes, markup not parsed."""
    if value is None:
        return Text("")
    if isinstance(value, dict | list):
        value = json.dumps(value)
    text = "".join(
        ch if unicodedata.category(ch) not in ("Cc", "Cf") else ch.encode("unicode_escape").decode()
        for ch in str(value)
    )
    return Text(text)


def bold(label: str) -> Text:
    return Text(label, style="bold")


def mapping(out: Console, data: dict[str, Any]) -> None:
    table = Table(show_header=False, box=None)
    for key, value in data.items():
        table.add_row(bold(key), safe(value))
    out.print(table)


def rows(out: Console, columns: Sequence[str], items: Iterable[Sequence[object]],
         *, empty: str = "none") -> None:  # fmt: skip
    """A table, or ``empty`` when there is nothing to show."""
    items = list(items)
    if not items:
        out.print(empty)
        return
    table = Table(*columns)
    for item in items:
        table.add_row(*(safe(v) for v in item))
    out.print(table)


def tree(out: Console, data: dict[str, Any]) -> None:
    acct = data["account"]
    root = Tree(bold(f"{safe(acct['name'])}").append(f" (account {acct['id']}) pool: "
                                                    f"{acct['available']}"))  # fmt: skip
    for ws in data["workspaces"]:
        branch = root.add(
            bold(str(safe(ws["name"]))).append(
                f" (workspace {ws['id']}) unassigned: {ws['available']}"
            )
        )
        for m in ws["members"]:
            held = f", held: {m['held']}" if m["held"] else ""
            branch.add(
                safe(m["name"]).append(
                    f" (member {m['id']}, {m['role']}) remaining: {m['available']}{held}"
                )
            )
        if not ws["members"]:
            branch.add("no members")
    out.print(root)
    totals = Table("totals", "credits")
    for key, value in data["totals"].items():
        totals.add_row(key, str(value))
    out.print(totals)


def history(out: Console, data: dict[str, Any]) -> None:
    rows(
        out,
        ("entry", "at", "kind", "bucket", "amount", "balance after", "job", "by"),
        (
            (e["entry_id"], e["at"], e["kind"], e["bucket"], f"{e['amount']:+d}",
             e["balance_after"], e["job_id"] or "", e["by"])
            for e in data["entries"]
        ),
    )  # fmt: skip
    if data["next_before"]:
        out.print(f"more: --before {data['next_before']}")


JOB_FIELDS = ("job_id", "member_id", "action", "status", "cost", "catalog_version", "attempts",
              "flow_id", "step_id", "vendor_ref", "key_id", "last_error", "created_at",
              "updated_at")  # fmt: skip


def job(out: Console, data: dict[str, Any]) -> None:
    summary = Table(show_header=False, box=None)
    for key in JOB_FIELDS:
        summary.add_row(bold(key), safe(data.get(key)))
    hold = data["hold"]
    summary.add_row(bold("hold"), f"{hold['amount']} {hold['state']}" if hold else "none")
    out.print(summary)
    changes = [(h["at"], h["from"] or "", h["to"], h["detail"] or "") for h in data["history"]]
    rows(out, ("at", "from", "to", "detail"), changes)
