"""Prometheus metrics of the worker, named by Prometheus conventions (``credits_*``).

Counters and histograms are recorded where things happen, in every pool process; with
prefork they go through prometheus_client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``), switched on before any metric exists -- hence the lazy
imports here. Gauges that describe the ledger (open holds, the oldest one, parked jobs,
reconcile drift) are read from the database at scrape time, so they are right no matter
which process moved the credits.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from functools import cache
from typing import Any

log = logging.getLogger("credits.metrics")

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def prepare_multiprocess(settings: Any) -> None:
    """Switch prometheus_client to multiprocess mode, in the worker's main process."""
    if not settings.metrics_port:
        return
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="credits-metrics-")
    # The celery command loads Flower's CLI plugin, which imports prometheus_client before
    # our app exists; its value class was chosen then, so choose it again.
    import sys

    values = sys.modules.get("prometheus_client.values")
    if values is not None:
        values.ValueClass = values.get_value_class()


_INIT_LOCK = threading.Lock()


def _m() -> Any:
    # Thread-safe: with the threads pool, two tasks may record their first metric at once,
    # and registering a metric twice raises.
    with _INIT_LOCK:
        return _metrics()


@cache
def _metrics() -> Any:
    from prometheus_client import Counter, Histogram

    class M:
        jobs = Counter("credits_jobs_total", "Jobs that reached a final status.", ["status"])
        parked = Counter("credits_jobs_parked_total", "Jobs parked awaiting credits.")
        credits = Counter(
            "credits_credits_total", "Credits held, captured and released.", ["movement"]
        )
        lock_wait = Histogram(
            "credits_lock_wait_seconds", "Time spent acquiring Redis locks.", ["lock"],
            buckets=LATENCY_BUCKETS_S,
        )  # fmt: skip
        vendor = Histogram(
            "credits_vendor_latency_seconds", "Fulfilment provider call latency.",
            ["operation", "outcome"], buckets=LATENCY_BUCKETS_S,
        )  # fmt: skip
        sweeps = Counter("credits_sweep_runs_total", "Recovery sweep runs.", ["sweep"])
        retries = Counter(
            "credits_task_retries_total", "Task retries by reason.", ["task", "reason"]
        )

    return M


def job_outcome(status: str) -> None:
    if status == "awaiting_credits":
        _m().parked.inc()
    else:
        _m().jobs.labels(status).inc()


def credits_moved(movement: str, amount: int) -> None:
    if amount:
        _m().credits.labels(movement).inc(amount)


def lock_waited(lock: str, seconds: float) -> None:
    _m().lock_wait.labels(lock).observe(seconds)


def vendor_call(operation: str, outcome: str, seconds: float) -> None:
    _m().vendor.labels(operation, outcome).observe(seconds)


def sweep_ran(name: str) -> None:
    _m().sweeps.labels(name).inc()


def task_retried(task: str, reason: str) -> None:
    _m().retries.labels(task, reason).inc()


class LedgerCollector:
    """Gauges computed from the database on each scrape."""

    def __init__(self, db: Any, redis: Any, key_prefix: str) -> None:
        self.db, self.redis, self.key_prefix = db, redis, key_prefix

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        from shared.services.recovery import ledger_gauges

        try:
            figures = ledger_gauges(self.db)
            drift = int(self.redis.get(f"{self.key_prefix}reconcile:drift") or 0)
            books = self.redis.hgetall(f"{self.key_prefix}reconcile:figures")
        except Exception:  # a scrape must answer even when the database does not
            log.exception("metrics: cannot read ledger gauges")
            return
        yield GaugeMetricFamily("credits_open_holds", "Holds not yet captured or released.",
                                value=figures["open_holds"])  # fmt: skip
        yield GaugeMetricFamily("credits_open_held_credits", "Credits in open holds.",
                                value=figures["open_held_credits"])  # fmt: skip
        yield GaugeMetricFamily(
            "credits_oldest_open_hold_age_seconds", "Age of the oldest open hold.",
            value=figures["oldest_open_hold_age_s"],
        )  # fmt: skip
        yield GaugeMetricFamily("credits_jobs_awaiting_credits", "Jobs parked for credits.",
                                value=figures["awaiting_credits"])  # fmt: skip
        yield GaugeMetricFamily(
            "credits_reconcile_drift", "Problems found by the last reconcile (0 is good).",
            value=drift,
        )  # fmt: skip
        ledger = GaugeMetricFamily(
            "credits_ledger_credits", "Credits by place, as of the last reconcile.",
            labels=["place"],
        )  # fmt: skip
        for place, value in sorted(books.items()):
            ledger.add_metric([place.decode()], float(value))
        yield ledger


def start_server(settings: Any, db: Any, redis: Any) -> None:
    """Serve /metrics from the worker's main process on ``settings.metrics_port``."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        from prometheus_client import multiprocess

        for name in os.listdir(path):  # stale files from an earlier run would double count
            os.unlink(os.path.join(path, name))
        multiprocess.MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY

        registry = REGISTRY
    registry.register(LedgerCollector(db, redis, settings.key_prefix))
    start_http_server(settings.metrics_port, addr=settings.metrics_addr, registry=registry)
    log.info("metrics on %s:%d/metrics", settings.metrics_addr, settings.metrics_port)


def cleanup() -> None:
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path and path.startswith(tempfile.gettempdir()):
        shutil.rmtree(path, ignore_errors=True)
