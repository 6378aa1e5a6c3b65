"""`credits demo --database-url --redis-url` runs the same scenario on real servers."""

from __future__ import annotations

from entrypoints.cli import main
from tests.services import REDIS_URL


def test_demo_against_postgresql_redis_and_a_worker_process(pg_url, redis_db, capsys):
    code = main(["demo", "--jobs", "60", "--database-url", pg_url,
                 "--redis-url", f"{REDIS_URL}/{redis_db}"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "credits demo: servers" in out
    assert "reconcile OK" in out and "60 jobs" in out
