"""`make bench`: the send pipeline measured end to end with real workers, against a no-op.

Starts a private redis-server for the app (locks, events, and the broker with Redis), one
for the stub vendor, a fresh PostgreSQL database and, with RabbitMQ, a fresh vhost; runs
real `celery -A worker worker` processes with the project's settings; and reports the
figures and targets of issue 10 side by side from one run, as a table and as JSON.

    python -m bench [--quick] [--broker redis|amqp|all] [--json PATH] [--rss-jobs N] [--rounds N]

Environment: CREDITS_BENCH_PG_URL (default postgresql://postgres@127.0.0.1:5432/postgres),
CREDITS_BENCH_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672; vhosts are made with
rabbitmqctl). Other CREDITS_* variables reach the workers as they are.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.report import FULL_RSS_JOBS, render, verdicts
from bench.scenarios import DEFAULT, QUICK, run_broker
from bench.services import Postgres, machine_facts
from bench.stack import BROKERS

RESULTS = Path(__file__).resolve().parent / "results"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round, smaller runs")
    parser.add_argument("--broker", choices=[*BROKERS, "all"], default="all")
    parser.add_argument("--json", type=Path, default=RESULTS / "latest.json", metavar="PATH")
    parser.add_argument("--rss-jobs", type=int, default=None, metavar="N",
                        help=f"(f): run at least N send_action jobs on the production worker "
                             f"(the target is for {FULL_RSS_JOBS:,}; that takes long)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=None, help="rounds of (a), (b), (c)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    sizes = QUICK if args.quick else DEFAULT
    if args.rss_jobs is not None:
        sizes = dataclasses.replace(sizes, rss_jobs=args.rss_jobs)
    if args.rounds is not None:
        sizes = dataclasses.replace(sizes, rounds=args.rounds)
    brokers = BROKERS if args.broker == "all" else (args.broker,)
    pg = Postgres().create()
    try:
        machine = machine_facts(pg)
    finally:
        pg.drop()
    report = {"started": datetime.now(UTC).isoformat(timespec="seconds"),
              "command": " ".join(["python -m bench", *(argv or sys.argv[1:])]),
              "machine": machine, "results": {}, "errors": {}}  # fmt: skip
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="credits-bench-") as tmp:
        for broker in brokers:
            try:
                report["results"][broker] = run_broker(broker, sizes, Path(tmp), log=_log)
            except Exception as exc:  # one broker failing still reports the other
                report["errors"][broker] = f"{type(exc).__name__}: {exc}"
                _log(f"[{broker}] failed: {type(exc).__name__}: {exc}")
    report["seconds"] = round(time.monotonic() - started, 1)
    # The instrument's own CPU (publishing, polling, reading events), beside the workers'.
    report["bench_cpu_seconds"] = round(sum(os.times()[:2]), 1)
    for r in report["results"].values():
        r["targets"] = verdicts(r)
    print()
    print(render(report))
    print(
        f"\n{report['seconds']:.0f} s (the bench process itself used "
        f"{report['bench_cpu_seconds']:.0f} s of CPU); JSON: {args.json}"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1, default=str) + "\n")
    return 1 if report["errors"] else 0


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
