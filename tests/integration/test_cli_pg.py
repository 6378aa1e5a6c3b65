"""The ``credits`` command line on real PostgreSQL, with a URL as users write it."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from shared.cli import main
from tests.services import create_pg_database, drop_pg_database, pg_url_for


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CREDITS_") and not name.startswith("CREDITS_TEST_"):
            monkeypatch.delenv(name)


@pytest.fixture
def empty_pg_url() -> Iterator[str]:
    """A PostgreSQL database that has never been migrated."""
    name = create_pg_database(prefix="credits_empty")
    try:
        yield pg_url_for(name)
    finally:
        drop_pg_database(name)


@pytest.fixture
def credits(capsys: pytest.CaptureFixture):
    def run(*args: object) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def ok(run: tuple[int, str, str]) -> dict:
    code, out, err = run
    assert (code, err) == (0, ""), err
    data = json.loads(out)
    assert isinstance(data, dict)
    return data


def test_worked_example_through_the_cli_on_postgres(
    credits, empty_pg_url: str, monkeypatch: pytest.MonkeyPatch
):
    # given a plain postgresql:// URL to a database nobody has migrated
    assert empty_pg_url.startswith("postgresql://")
    monkeypatch.setenv("CREDITS_DATABASE_URL", empty_pg_url)
    code, out, err = credits("tree", 1)
    assert (code, out) == (8, "")
    assert "run `credits db upgrade` first" in err

    # when the operator migrates it and runs the worked example
    assert ok(credits("db", "upgrade", "--json"))["ok"] is True
    account = ok(credits("account", "create", "Acme", "--credits", 50, "--json"))
    workspace = ok(credits("workspace", "create", account["id"], "Sales", "--json"))
    james = ok(credits("member", "add", workspace["id"], "James", "--json"))
    ok(credits("allocate", "--workspace", workspace["id"], 10, "--json"))
    ok(credits("allocate", "--member", james["id"], 5, "--json"))

    # then the tree reads 40 / 5 / 5 and the books reconcile
    tree = ok(credits("tree", account["id"], "--json"))
    assert tree["account"]["available"] == 40
    assert tree["workspaces"][0]["available"] == 5
    assert tree["workspaces"][0]["members"][0]["available"] == 5
    assert tree["totals"]["total"] == 50
    wallet = ok(credits("balance", "--member", james["id"], "--json"))
    assert (wallet["available"], wallet["held"]) == (5, 0)
    report = ok(credits("reconcile", "--json"))
    assert report["ok"] is True and report["figures"]["purchased"] == 50

    # and a reclaim by negative N moves credits back up
    ok(credits("allocate", "--member", james["id"], -2, "--json"))
    assert ok(credits("balance", "--member", james["id"], "--json"))["available"] == 3


def test_database_url_option_takes_a_plain_postgres_url(credits, pg_url: str):
    assert pg_url.startswith("postgresql://")
    account = ok(credits("--database-url", pg_url, "account", "create", "Acme", "--json"))
    balance = ok(credits("--database-url", pg_url, "balance", "--account", account["id"], "--json"))
    assert balance["available"] == 0


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["tree", "999"], 3, "account 999 does not exist"),
        (["tree", "99999999999999999999"], 2, "99999999999999999999"),
        (["balance", "--member", "9223372036854775808"], 2, "9223372036854775808"),
        (["account", "topup", "999", "5"], 3, "account 999 does not exist"),
        (["account", "create", ""], 2, "account name must not be empty"),
    ],
)
def test_bad_input_on_postgres_is_reported_not_raised(credits, pg_url, argv, code, message):
    run_code, out, err = credits("--database-url", pg_url, *argv)
    assert (run_code, out) == (code, "")
    assert message in err
    assert "Traceback" not in err
