"""The table and the targets of issue 10, from the results of one run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

FULL_RSS_JOBS = 100_000


@dataclass(frozen=True)
class Target:
    label: str
    text: str
    value: Callable[[dict], float | None]
    ok: Callable[[float], bool]


def best_slow(r: dict) -> dict | None:
    measured = [p for p in r["slow_vendor"]["pools"] if "rate" in p]
    return max(measured, key=slow_ratio, default=None)


def slow_ratio(pool: dict) -> float:
    """(e) over the (b) measured right before it on the production worker."""
    return pool["rate"] / pool["send_rate"]


def redis_extra(r: dict) -> float:
    cost = r["cost"]
    return cost["send"]["redis_per_job"] - cost["noop"]["redis_per_job"]


def cpu_ratio(r: dict) -> float:
    """No-op CPU per job over send_action CPU per job, our processes only (the worker, its
    PostgreSQL backends, the app's Redis): what (b)/(a) would be if CPU were all."""

    def ours(name: str) -> float:
        cpu = r["cost"][name]["cpu_ms_per_job"]
        return cpu["worker"] + cpu["postgres"] + cpu["app_redis"]

    return ours("noop") / ours("send")


def _pg(r: dict, name: str) -> float | None:
    return r["cost"][name].get("pg_per_job", {}).get("xact_commit")


def _best_slow_ratio(r: dict) -> float | None:
    best = best_slow(r)
    return slow_ratio(best) if best else None


TARGETS = (
    Target("(b)/(a)", ">= 0.40", lambda r: r["ratios"]["send_over_noop"]["median"],
           lambda v: v >= 0.40),
    Target("PG transactions per job (b)", "<= 2.2", lambda r: _pg(r, "send"),
           lambda v: v <= 2.2),
    Target("Redis commands per job, (b) - no-op", "<= 10", redis_extra, lambda v: v <= 10),
    Target("(c)/(b)", ">= 0.5", lambda r: r["ratios"]["one_member_over_send"]["median"],
           lambda v: v >= 0.5),
    Target("(e) best pool / (b)", ">= 0.5", _best_slow_ratio, lambda v: v >= 0.5),
    Target("(d) p99 latency, ms", "< 100", lambda r: r["latency"]["p99_ms"],
           lambda v: v < 100),
    Target("(f) RSS growth after warm-up", "< 10%",
           lambda r: r["memory"]["growth_from_warm"], lambda v: v < 0.10),
)  # fmt: skip


def verdicts(result: dict) -> list[dict[str, Any]]:
    out = []
    for t in TARGETS:
        try:
            value = t.value(result)
        except (KeyError, ZeroDivisionError):
            value = None
        out.append({"figure": t.label, "target": t.text, "value": value,
                    "pass": None if value is None else bool(t.ok(value))})  # fmt: skip
    return out


def mark(ok: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "n/a"}[ok]


def _rate(t: dict, unit: str) -> str:
    spread = f" ({t['min']:,.0f}-{t['max']:,.0f}, {t['runs']} runs)" if t["runs"] > 1 else ""
    return f"{t['median']:,.1f} {unit}{spread}"


def _ratio(t: dict) -> str:
    spread = f" ({t['min']:.2f}-{t['max']:.2f})" if t["runs"] > 1 else ""
    return f"{t['median']:.2f}{spread}"


def _mb(n: int) -> str:
    return f"{n / 2**20:,.0f} MB"


def rows(r: dict) -> list[tuple[str, str, str]]:
    """(figure, target, value) for one broker; a targeted value ends in PASS or FAIL."""
    verdict = {x["figure"]: x["pass"] for x in verdicts(r)}
    tp, ratios, lat, mem, cost = r["throughput"], r["ratios"], r["latency"], r["memory"], r["cost"]
    cpu = {name: cost[name]["cpu_ms_per_job"] for name in ("noop", "send", "one_member")}
    first, warm, end = mem["samples"][0], mem["samples"][1], mem["samples"][-1]
    partial = "" if mem["sends"] >= FULL_RSS_JOBS else f"; {mem['tasks']:,} tasks, not 100k"
    written = sum(cost["send"]["pg_per_job"][k] for k in ("tup_inserted", "tup_updated",
                                                          "tup_deleted"))  # fmt: skip
    out = [
        ("(a) no-op ceiling", None, _rate(tp["noop"], "tasks/s")),
        ("(b) send_action, 100 members", None, _rate(tp["send"], "jobs/s")),
        ("(b)/(a)", "(b)/(a)", _ratio(ratios["send_over_noop"])),
        ("(b)/(a) from CPU per job (worker+PG+Redis)", None, f"{cpu_ratio(r):.2f}"),
        ("(c) send_action, one member", None, _rate(tp["one_member"], "jobs/s")),
        ("(c)/(b)", "(c)/(b)", _ratio(ratios["one_member_over_send"])),
        ("(d) latency at half (b)'s rate: p50 / p99 / max", "(d) p99 latency, ms",
         f"{lat['p50_ms']:.0f} / {lat['p99_ms']:.0f} / {lat['max_ms']:.0f} ms "
         f"at {lat['rate']:.1f} jobs/s"),
    ]  # fmt: skip
    slow = r["slow_vendor"]
    for p in slow["pools"]:
        text = (f"{p['rate']:,.1f} jobs/s = {slow_ratio(p):.2f}x (b) at {p['send_rate']:,.1f}"
                if "rate" in p else "failed: " + p["error"].splitlines()[-1][:60])  # fmt: skip
        out.append((f"(e) {slow['latency_ms']} ms vendor, {p['pool']}", None, text))
    best = best_slow(r)
    out += [
        ("(e) best pool / (b)", "(e) best pool / (b)", best["pool"] if best else "none ran"),
        ("(f) worker RSS: idle / warm / end", "(f) RSS growth after warm-up",
         f"{_mb(first['rss'])} / {_mb(warm['rss'])} / {_mb(end['rss'])} "
         f"({mem['growth_from_warm']:+.1%}, {mem['growth_from_start']:+.1%} from idle{partial})"),
        ("(f) worker PSS: idle / warm / end", None,
         f"{_mb(first['pss'])} / {_mb(warm['pss'])} / {_mb(end['pss'])} "
         f"({mem['pss_growth_from_warm']:+.1%} from warm)"),
        ("PG transactions per job: no-op / (b)", "PG transactions per job (b)",
         f"{_pg(r, 'noop'):.2f} / {_pg(r, 'send'):.2f}"),
        ("PG rows written per job (b)", None, f"{written:.1f}"),
        ("Redis commands per job: no-op / (b)", "Redis commands per job, (b) - no-op",
         f"{cost['noop']['redis_per_job']:.1f} / {cost['send']['redis_per_job']:.1f} "
         f"({redis_extra(r):+.1f})"),
        ("Redis commands per job (c)", None, f"{cost['one_member']['redis_per_job']:.1f}"),
        ("CPU ms per job, worker: no-op / (b) / (c)", None,
         " / ".join(f"{cpu[n]['worker']:.1f}" for n in cpu)),
        ("CPU ms per job (b): PostgreSQL / app Redis", None,
         f"{cpu['send']['postgres']:.1f} / {cpu['send']['app_redis']:.1f}"),
        ("vendor stub's Redis per job (not ours)", None,
         f"{cost['send']['vendor_redis_per_job']:.1f}"),
    ]  # fmt: skip
    targets = {t.label: t.text for t in TARGETS}
    return [(label, targets.get(key, "") if key else "",
             f"{text}  {mark(verdict[key])}" if key else text)
            for label, key, text in out]  # fmt: skip


def table(headers: list[str], body: list[list[str]]) -> str:
    widths = [max(len(str(row[i])) for row in [headers, *body]) for i in range(len(headers))]
    line = "  ".join("-" * w for w in widths)

    def fmt(row: list[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()

    return "\n".join([fmt(headers), line, *(fmt(r) for r in body)])


def figures(results: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: one row per figure, one column per broker."""
    brokers = list(results)
    per = {b: rows(results[b]) for b in brokers}
    body = [[label, target, *(per[b][i][2] for b in brokers)]
            for i, (label, target, _) in enumerate(per[brokers[0]])]  # fmt: skip
    return ["figure", "target", *brokers], body


def figures_table(results: dict[str, dict]) -> str:
    return table(*figures(results))


def markdown(report: dict) -> str:
    """The figures as a Markdown table, with the machine, for the README."""
    headers, body = figures(report["results"])
    lines = [f"| {' | '.join(headers)} |", f"|{' --- |' * len(headers)}"]
    lines += [f"| {' | '.join(c.replace('|', '/') for c in row)} |" for row in body]
    return "\n".join([*lines, "", f"Machine: {machine_line(report['machine'])}."])


def commands_table(results: dict[str, dict], top: int = 20) -> str:
    """Redis calls per job by command: no-op, (b), and what (b) adds, per broker."""
    brokers = list(results)
    names: dict[str, float] = {}
    for b in brokers:
        for name, n in results[b]["cost"]["send"]["redis_commands"].items():
            names[name] = max(names.get(name, 0), n)
        for name, n in results[b]["cost"]["noop"]["redis_commands"].items():
            names.setdefault(name, n)
    body = []
    for name in sorted(names, key=lambda k: -names[k])[:top]:
        row = [name]
        for b in brokers:
            noop = results[b]["cost"]["noop"]["redis_commands"].get(name, 0.0)
            send = results[b]["cost"]["send"]["redis_commands"].get(name, 0.0)
            row += [f"{noop:.2f}", f"{send:.2f}", f"{send - noop:+.2f}"]
        body.append(row)
    headers = ["command"] + [f"{b} {c}" for b in brokers for c in ("no-op", "(b)", "added")]
    return table(headers, body)


def machine_line(m: dict) -> str:
    return (f"{m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB; Python {m['python']}, "
            f"PostgreSQL {m['postgresql']}, Redis {m['redis']}, RabbitMQ {m['rabbitmq']}, "
            f"Celery {m['celery']}, kombu {m['kombu']}; load average at start "
            f"{' '.join(str(x) for x in m['load_average'])}")  # fmt: skip


def render(report: dict) -> str:
    results = report["results"]
    parts = [f"machine: {machine_line(report['machine'])}"]
    for b, r in results.items():
        loads = [d["load"] for t in r["throughput"].values() for d in t["all"]]
        parts.append(f"{b}: {r['worker']}; {r['seconds']:.0f} s; machine load average "
                     f"{min(loads):.1f}-{max(loads):.1f} during the drains")  # fmt: skip
    if results:
        parts += ["", figures_table(results), "",
                  "Redis calls per job by command (Lua scripts' inner calls included):",
                  commands_table(results)]  # fmt: skip
    for b, error in report.get("errors", {}).items():
        parts.append(f"\n{b}: FAILED: {error}")
    for b, r in results.items():
        notes = [f"{p['pool']}: {p['log_errors'][-1]}" for p in r["slow_vendor"]["pools"]
                 if p.get("log_errors")]  # fmt: skip
        for note in notes:
            parts.append(f"{b}: worker errors with {note}")
    return "\n".join(parts)


if __name__ == "__main__":  # python -m bench.report [JSON]: the README's Markdown table
    import json
    import sys
    from pathlib import Path

    default = Path(__file__).resolve().parent / "results" / "latest.json"
    print(markdown(json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else default).read_text())))
