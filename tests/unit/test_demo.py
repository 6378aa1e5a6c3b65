"""The embedded demo (`make demo`) runs end to end with no servers and balances its books."""

from __future__ import annotations

import pytest

from entrypoints.cli import main

pytestmark = pytest.mark.usefixtures("clean_environment")


def test_embedded_demo_settles_every_job_and_reconciles(capsys):
    code = main(["demo", "--jobs", "40"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "reconcile OK" in out
    assert "Outcomes" in out and "completed" in out
    assert "still held          │ 0" in out


def test_demo_wants_both_server_urls_or_neither(capsys):
    code = main(["demo", "--database-url", "sqlite:///x.db"])
    assert code == 2
    assert "--redis-url" in capsys.readouterr().err
