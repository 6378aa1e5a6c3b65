"""Where a real worker spends its time: py-spy on a production worker during a (b)-style run.

    python -m bench.profile [--broker redis|amqp] [--jobs N] [--pool prefork] [-c 2]
                            [--latency-ms 0] [--one-member] [--format speedscope|flamegraph]

Starts the same private stack as ``python -m bench``, one worker, warms it up, publishes
N jobs while it is paused, then records the worker's whole process tree (main process
and pool children: ``py-spy record --subprocesses``) while it drains them. Writes the
profile into bench/results/ (speedscope: open it in speedscope; flamegraph: an SVG for a
browser) and, for speedscope, prints where the samples fall: by package, by function
(self), and by project function (inclusive). py-spy needs ptrace (root, or
CAP_SYS_PTRACE).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

from bench.__main__ import RESULTS
from bench.report import table
from bench.stack import Stack, postcards, running
from bench.worker import ROOT, Pool

PY_SPY = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
PROJECT_PACKAGES = ("shared", "worker", "entrypoints")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.profile",
                                     description=__doc__.splitlines()[0])  # fmt: skip
    parser.add_argument("--broker", choices=["redis", "amqp"], default="redis")
    parser.add_argument("--jobs", type=int, default=1500)
    parser.add_argument("--pool", default="prefork", choices=["prefork", "threads", "gevent"])
    parser.add_argument("-c", "--concurrency", type=int, default=2)
    parser.add_argument("--latency-ms", type=float, default=0, help="stub vendor latency")
    parser.add_argument("--one-member", action="store_true", help="(c): every job on one member")
    parser.add_argument("--format", choices=["speedscope", "flamegraph", "raw"],
                        default="speedscope")  # fmt: skip
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument(
        "--gil",
        action="store_true",
        help="only samples holding the GIL: Python CPU time, no waiting",
    )
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if PY_SPY is None:
        print("py-spy is not installed: make .venv/.installed (it is a dev dependency)")
        return 2
    pool = Pool(args.pool, args.concurrency)
    suffix = {"speedscope": "speedscope.json", "flamegraph": "svg", "raw": "txt"}[args.format]
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    output = args.out / f"profile-{args.broker}-{args.pool}-{args.concurrency}-{stamp}.{suffix}"
    with (
        tempfile.TemporaryDirectory(prefix="credits-profile-") as tmp,
        Stack(args.broker, Path(tmp)) as stack,
    ):
        members = stack.fund(1 if args.one_member else 100)
        env = {"CREDITS_STUB_LATENCY_MS": str(args.latency_ms)}
        with running(stack, pool, **env) as worker:
            stack.drain(worker, "warm-up", 100, postcards(members, 100, "warm"))
            jobs = postcards(members, args.jobs, "p")
            spy = subprocess.Popen(
                [PY_SPY, "record", "--pid", str(worker.proc.pid), "--subprocesses",
                 "--nonblocking", "--full-filenames", "--rate", str(args.rate),
                 "--format", args.format, "--output", str(output),
                 *(["--gil"] if args.gil else [])],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            time.sleep(1.0)  # py-spy attaches
            drain = stack.drain(worker, "profiled", len(jobs), jobs)
            spy.send_signal(signal.SIGINT)
            _, err = spy.communicate(timeout=120)
    print(f"{drain.jobs} jobs in {drain.seconds:.1f} s = {drain.rate:.1f} jobs/s under py-spy "
          f"(--nonblocking, {args.rate}/s); worker: {worker.display}")  # fmt: skip
    if not output.exists():
        print(f"py-spy wrote nothing: {err.decode(errors='replace')[-2000:]}")
        return 1
    print(f"profile: {output}")
    if args.format == "speedscope":
        print(summarise(json.loads(output.read_text()), args.top))
    return 0


def summarise(profile: dict, top: int) -> str:
    """Sampled time by package (self), by function (self), and by project function
    (inclusive), over every process of the worker; py-spy's weights are seconds."""
    frames = profile["shared"]["frames"]
    by_package, by_self, inclusive, by_process = Counter(), Counter(), Counter(), Counter()
    for p in profile["profiles"]:
        for stack, seconds in zip(p["samples"], p["weights"], strict=True):
            if not stack:
                continue
            by_process[p["name"].split(" Thread")[0]] += seconds
            leaf = frames[stack[-1]]  # py-spy lists a stack root first
            by_package[package(leaf.get("file", ""))] += seconds
            by_self[label(leaf)] += seconds
            for name in {label(frames[i]) for i in stack if _ours(frames[i])}:
                inclusive[name] += seconds
    total = sum(by_process.values())

    def pct(counter: Counter) -> list[list[str]]:
        return [[f"{100 * n / total:5.1f}%", name] for name, n in counter.most_common(top)]

    processes = ", ".join(f"{name} {s:.1f} s" for name, s in by_process.items())
    return "\n\n".join([
        f"{total:.1f} s sampled (threads py-spy saw as busy): {processes}",
        table(["self", "package"], pct(by_package)),
        table(["self", "function"], pct(by_self)),
        table(["incl.", "project function"], pct(inclusive)),
    ])  # fmt: skip


def label(frame: dict) -> str:
    return f"{frame['name']} ({locate(frame.get('file', ''))[1]})"


def package(path: str) -> str:
    return locate(path)[0]


def locate(path: str) -> tuple[str, str]:
    """(package, short path) of a source file: a dependency, the project, or the stdlib."""
    root = f"{ROOT}/"
    if "/site-packages/" in path:
        rel = path.split("/site-packages/", 1)[1]
        return rel.split("/", 1)[0], rel
    if path.startswith(root):
        rel = path.removeprefix(root)
        return rel.split("/", 1)[0], rel
    if "/lib/python3." in path:
        rel = path.split("/lib/python3.", 1)[1].split("/", 1)[-1]
        return "stdlib:" + rel.split("/", 1)[0].removesuffix(".py"), rel
    return path or "?", path


def _ours(frame: dict) -> bool:
    return locate(frame.get("file", ""))[0] in PROJECT_PACKAGES


if __name__ == "__main__":
    sys.exit(main())
