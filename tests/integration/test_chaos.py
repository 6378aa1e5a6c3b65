"""The smallest fault scenarios of ``make chaos`` (tests/chaos), quick size, both brokers:
a worker SIGKILLed twice and PostgreSQL's backends terminated three times while jobs flow,
with the suite's own checks (nothing accepted missing, the books sound, no wrongful
refund, no worker exit the test did not cause)."""

from __future__ import annotations

import shutil

import pytest

from tests.chaos.report import problems
from tests.chaos.scenarios import SCENARIOS, run
from tests.services import missing, pg_admin

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def _servers(broker: str) -> None:
    """Fail under CI=true, skip elsewhere, when a server the run starts is not there."""
    pg_admin().close()
    for exe in ["redis-server"] + (["rabbitmq-server"] if broker == "amqp" else []):
        if shutil.which(exe) is None:
            missing(f"{exe} is not installed")


# Each run starts its servers, two workers and beat; a Redis worker's lost message waits
# out the visibility timeout (30 s here). On a loaded 2-core machine: up to ~3 min each.
@pytest.mark.timeout(600)
@pytest.mark.parametrize("broker", ["redis", "amqp"])
@pytest.mark.parametrize("name", ["worker-kill", "pg-terminate"])
def test_a_quick_fault_scenario_passes_the_suites_checks(broker, name, tmp_path):
    _servers(broker)
    _run, result = run(SCENARIOS[name], broker, tmp_path, quick=True, log=lambda _m: None)
    assert result["published"] == SCENARIOS[name].quick.jobs, result["refused_examples"]
    assert result["ok"], problems(result)
    assert result["worker_exits_caused"] == (2 if name == "worker-kill" else 0)
