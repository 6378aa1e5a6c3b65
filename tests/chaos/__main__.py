"""``python -m tests.chaos [--broker redis|amqp|all] [--quick] [--scenario NAME ...]
[--json PATH]``: run the fault scenarios, print the table, exit 1 if a check failed."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from tests.chaos.report import problems, table, write_json
from tests.chaos.scenarios import SCENARIOS, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--broker", choices=["redis", "amqp", "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    parser.add_argument("--scenario", nargs="+", choices=sorted(SCENARIOS), metavar="NAME",
                        help=f"any of: {', '.join(SCENARIOS)} (default: all)")  # fmt: skip
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the logs of passing runs")
    args = parser.parse_args(argv)
    brokers = ["redis", "amqp"] if args.broker == "all" else [args.broker]
    names = args.scenario or list(SCENARIOS)
    root = Path(tempfile.mkdtemp(prefix="credits-chaos-"))
    print(f"logs in {root}", flush=True)
    started = time.monotonic()
    results = []
    for broker in brokers:
        for name in names:
            workdir = root / f"{broker}-{name}"
            workdir.mkdir()
            print(f"{broker} {name}: {SCENARIOS[name].about}", flush=True)
            try:
                _run, result = run(SCENARIOS[name], broker, workdir, quick=args.quick,
                                   log=lambda m: print(m, flush=True))  # fmt: skip
            except Exception as exc:  # the run itself broke: report it, go on
                result = _broken(broker, name, exc)
            results.append(result)
            print(f"  -> {'ok' if result['ok'] else 'FAILED'} in {result['seconds']:.0f} s "
                  f"({result['published']} published, {result['final']} final, "
                  f"{result['missing']} missing)", flush=True)  # fmt: skip
            if result["ok"] and not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
    minutes = (time.monotonic() - started) / 60
    print()
    print(table(results))
    failed = [line for r in results for line in problems(r)]
    for line in failed:
        print(f"FAILED {line}")
    print(f"\n{len(results)} runs in {minutes:.1f} min; logs of failed runs in {root}")
    if args.json:
        meta = {"finished": datetime.now(UTC).isoformat(timespec="seconds"),
                "quick": args.quick, "minutes": round(minutes, 1)}  # fmt: skip
        write_json(args.json, results, meta)
    return 1 if failed else 0


def _broken(broker: str, name: str, exc: Exception) -> dict:
    import traceback

    traceback.print_exc()
    return {"scenario": name, "broker": broker, "published": 0, "final": 0, "parked": 0,
            "missing": 0, "wrongful_refunds": [],
            "worker_exits_not_caused": 0, "worker_exits_caused": 0, "seconds": 0,
            "checks": {"run": False}, "ok": False, "error": f"{type(exc).__name__}: {exc}",
            "details": []}  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
