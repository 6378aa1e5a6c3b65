"""Helpers every kind of test uses: waiting with a deadline, and one race harness.

Races follow saleor's ``race_condition.py`` and cosmicpython's ``test_uow.py``: threads
are released together by a barrier, or forced to interleave at an exact point with
:func:`interleave`, and exactly one of them may win.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout_s: float, what: str, every_s: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def race(n: int, call: Callable[[int], Any]) -> list[Any]:
    """Run ``call(i)`` in ``n`` threads released at once; each result or exception."""
    barrier = threading.Barrier(n, timeout=30)

    def one(i: int) -> Any:
        barrier.wait()
        try:
            return call(i)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, range(n)))


def successes(results: list[Any]) -> list[Any]:
    return [r for r in results if not isinstance(r, Exception)]


def failures(results: list[Any]) -> list[Exception]:
    return [r for r in results if isinstance(r, Exception)]


class Interleaving:
    """Stop one thread at a named point until the test lets it go (no sleeps)."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.release = threading.Event()

    def pause_here(self) -> None:
        self.reached.set()
        if not self.release.wait(30):
            raise TimeoutError("the test never released the paused thread")


@contextmanager
def interleave(target: Any, name: str) -> Iterator[Interleaving]:
    """Patch ``target.name`` so that its first call pauses until released.

    ``with interleave(module, "func") as point:`` start thread A, ``point.reached.wait()``,
    run thread B, then ``point.release.set()`` and join A.
    """
    original = getattr(target, name)
    point = Interleaving()
    first = threading.Lock()

    def paused(*args: Any, **kwargs: Any) -> Any:
        if first.acquire(blocking=False):
            result = original(*args, **kwargs)
            point.pause_here()
            return result
        return original(*args, **kwargs)

    setattr(target, name, paused)
    try:
        yield point
    finally:
        setattr(target, name, original)


def queue_length(broker_url: str, name: str) -> int:
    """Messages waiting in a broker queue (declared passively: it must exist)."""
    from kombu import Connection

    with Connection(broker_url) as conn:
        return conn.default_channel.queue_declare(queue=name, passive=True).message_count
