"""The ``credits`` command line on real PostgreSQL, with a URL as users write it."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from entrypoints.cli import main
from tests.services import create_pg_database, drop_pg_database, pg_url_for


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


def test_an_account_created_with_credits_above_the_limit_is_not_created(credits, pg_url):
    # when the initial top-up is refused
    code, out, err = credits("--database-url", pg_url, "account", "create", "Big", "--credits",
                             10**13, "--json")  # fmt: skip
    # then the account was not created either: one unit of work
    assert (code, out) == (2, "")
    assert "above the limit" in err
    assert ok(credits("--database-url", pg_url, "accounts", "--json"))["accounts"] == []


def test_idempotency_keys_of_two_accounts_never_collide(credits, pg_url):
    first = ok(credits("--database-url", pg_url, "account", "create", "Acme", "--json"))
    second = ok(credits("--database-url", pg_url, "account", "create", "Globex", "--json"))
    # when both accounts use the same order key
    a = ok(credits("--database-url", pg_url, "topup", first["id"], 10, "--key", "q3-bonus",
                   "--json"))  # fmt: skip
    b = ok(credits("--database-url", pg_url, "topup", second["id"], 7, "--key", "q3-bonus",
                   "--json"))  # fmt: skip
    # then each is its own top-up, and a retry in one account replays that account's
    assert (a["replayed"], b["replayed"]) == (False, False)
    again = ok(credits("--database-url", pg_url, "topup", first["id"], 10, "--key", "q3-bonus",
                       "--json"))  # fmt: skip
    assert again["replayed"] is True and again["transaction_id"] == a["transaction_id"]
    for account, available in ((first, 10), (second, 7)):
        balance = ok(credits("--database-url", pg_url, "balance", "--account", account["id"],
                             "--json"))  # fmt: skip
        assert balance["available"] == available


def test_a_member_cannot_tell_another_accounts_rows_from_missing_ones(credits, pg_url):
    # given a member of Acme, and Globex's account
    db = ("--database-url", pg_url)
    acme = ok(credits(*db, "account", "create", "Acme", "--json"))
    globex = ok(credits(*db, "account", "create", "Globex", "--json"))
    sales = ok(credits(*db, "workspace", "create", acme["id"], "Sales", "--json"))
    ava = ok(credits(*db, "member", "add", sales["id"], "Ava", "--json"))
    # when Ava asks for Globex's tree, and for an account that does not exist
    other = credits(*db, "--as", ava["id"], "tree", globex["id"])
    missing = credits(*db, "--as", ava["id"], "tree", 999999)
    # then both answers have the same form: not found
    assert other[0] == missing[0] == 3
    assert other[2].replace(str(globex["id"]), "N") == missing[2].replace("999999", "N")


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--as", "999999", "accounts"], 4, "acting member 999999 does not exist"),
        (["--as", "{ava}", "db", "upgrade"], 4, "migrate the schema"),
    ],
)
def test_who_acts_must_exist_and_only_support_migrates(credits, pg_url, argv, code, message):
    db = ("--database-url", pg_url)
    acme = ok(credits(*db, "account", "create", "Acme", "--json"))
    sales = ok(credits(*db, "workspace", "create", acme["id"], "Sales", "--json"))
    ava = ok(credits(*db, "member", "add", sales["id"], "Ava", "--json"))
    run_code, out, err = credits(*db, *(a.format(ava=ava["id"]) for a in argv))
    assert (run_code, out) == (code, "")
    assert message in err


def test_a_demo_whose_redis_does_not_answer_stops_before_writing_anything(
    credits, empty_pg_url: str
):
    # when the demo is pointed at a real database and a Redis nobody listens on
    code, out, err = credits(
        "demo", "--jobs", 5, "--database-url", empty_pg_url, "--redis-url", "redis://127.0.0.1:1/0"
    )
    # then it says so in one line, exits 11, and the database was left alone
    assert code == 11
    assert err.startswith("error: Redis is not answering") and err.count("\n") == 1, err
    assert "Traceback" not in out + err
    from sqlalchemy import create_engine, inspect

    engine = create_engine(empty_pg_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        assert inspect(engine).get_table_names() == []
    finally:
        engine.dispose()


def test_sending_for_a_member_who_does_not_exist_exits_3_and_publishes_nothing(
    credits, db, pg_url: str, redis_db: int, monkeypatch: pytest.MonkeyPatch
):
    from tests.factories import SIGNING_KEY
    from tests.services import REDIS_URL, redis_client

    monkeypatch.setenv("CREDITS_DATABASE_URL", pg_url)
    monkeypatch.setenv("CREDITS_REDIS_URL", f"{REDIS_URL}/{redis_db}")
    monkeypatch.setenv("CREDITS_KEY_PREFIX", "cli3:")
    monkeypatch.setenv("CREDITS_JOB_SIGNING_KEY", SIGNING_KEY)
    code, _out, err = credits(
        "send", "--member", 99999, "email", "--email", "a@b.co", "--subject", "Hi",
        "--body", "Hello", "--wait", 5, "--json",
    )  # fmt: skip
    assert code == 3
    assert json.loads(err) == {"error": "NotFound", "message": "member 99999 does not exist"}
    assert redis_client(redis_db).keys("cli3:credits.*") == []
