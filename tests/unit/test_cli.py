"""The ``credits`` command line, driven through ``shared.cli.main`` as a user would run it.

Each test points ``CREDITS_DATABASE_URL`` at its own SQLite file. A successful command
with ``--json`` prints exactly one JSON object on stdout; a failed one prints nothing on
stdout, says what is wrong on stderr and exits non-zero.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text

from shared.cli import main
from shared.db import Database
from shared.services import balances, directory
from tests.factories import Tree, funded_member

# ---------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    @property
    def json(self) -> dict:
        """The one JSON object a successful ``--json`` command printed."""
        assert self.code == 0, f"exit {self.code}: {self.err}"
        assert self.err == ""
        data = json.loads(self.out)
        assert isinstance(data, dict)
        return data


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CREDITS_* setting of the developer's shell leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("CREDITS_") and not name.startswith("CREDITS_TEST_"):
            monkeypatch.delenv(name)


@pytest.fixture
def credits(sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """Run ``credits ARGS...`` against this test's migrated SQLite database."""
    monkeypatch.setenv("CREDITS_DATABASE_URL", sqlite_url)

    def run(*args: object) -> Run:
        capsys.readouterr()  # forget anything printed before this command
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


@pytest.fixture
def example(db: Database) -> Tree:
    """The worked example: Acme has 50; 10 went to Sales and 5 of those on to James."""
    return funded_member(db, account_credits=50, workspace_credits=5, member_credits=5)


def ids(tree: Tree) -> dict[str, int]:
    return {"a": tree.account_id, "w": tree.workspace_id, "m": tree.member_id}


def fill(argv: list[str], tree: Tree) -> list[str]:
    return [arg.format(**ids(tree)) for arg in argv]


def snapshot(db: Database, tree: Tree) -> dict:
    return balances.tree(db, tree.account_id)


# ---------------------------------------------------------------- the worked example


def test_worked_example_runs_end_to_end_from_a_fresh_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    # given a database file that does not exist yet
    monkeypatch.setenv("CREDITS_DATABASE_URL", f"sqlite:///{tmp_path / 'fresh.db'}")

    def credits(*args: object) -> dict:
        capsys.readouterr()
        code = main([str(a) for a in args])
        return Run(code, *capsys.readouterr()).json

    # when the operator runs the worked example
    assert credits("db", "upgrade", "--json")["ok"] is True
    account = credits("account", "create", "Acme", "--credits", 50, "--json")
    workspace = credits("workspace", "create", account["id"], "Sales", "--json")
    james = credits("member", "add", workspace["id"], "James", "--json")
    credits("allocate", "--workspace", workspace["id"], 10, "--json")
    credits("allocate", "--member", james["id"], 5, "--json")

    # then the tree reads 40 / 5 / 5
    tree = credits("tree", account["id"], "--json")
    assert tree["account"]["available"] == 40
    assert tree["workspaces"][0]["available"] == 5
    assert tree["workspaces"][0]["members"][0]["name"] == "James"
    assert tree["workspaces"][0]["members"][0]["available"] == 5
    assert tree["totals"]["total"] == 50
    wallet = credits("balance", "--member", james["id"], "--json")
    assert (wallet["available"], wallet["held"]) == (5, 0)
    assert credits("reconcile", "--json")["ok"] is True


def test_db_upgrade_twice_is_harmless_and_reports_the_revision(credits):
    first = credits("db", "upgrade", "--json").json
    again = credits("db", "upgrade", "--json").json
    assert first == again
    assert first["revision"]


def test_database_url_option_overrides_the_environment(
    credits, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # given the environment points at a database that was never migrated
    monkeypatch.setenv("CREDITS_DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    # when --database-url names the migrated one, the command works there
    created = credits("--database-url", sqlite_url, "account", "create", "Acme", "--json").json
    assert created["name"] == "Acme"
    assert credits("account", "create", "Acme", "--json").code == 8


def test_negative_allocation_reclaims_to_the_parent_pool(credits, example):
    moved = credits("allocate", "--member", example.member_id, -2, "--json").json
    assert (moved["kind"], moved["amount"]) == ("reclaim", 2)
    assert credits("balance", "--member", example.member_id, "--json").json["available"] == 3
    assert credits("balance", "--workspace", example.workspace_id, "--json").json["available"] == 7


def test_set_allocation_moves_the_difference(credits, example):
    moved = credits("allocate", "--member", example.member_id, "--set", 8, "--json").json
    assert (moved["kind"], moved["amount"]) == ("allocate", 3)
    assert credits("balance", "--member", example.member_id, "--json").json["available"] == 8
    assert credits("balance", "--workspace", example.workspace_id, "--json").json["available"] == 2


def test_topup_with_the_same_key_twice_adds_credits_once(credits, example):
    first = credits("account", "topup", example.account_id, 7, "--key", "po-1", "--json").json
    again = credits("account", "topup", example.account_id, 7, "--key", "po-1", "--json").json
    assert (first["replayed"], again["replayed"]) == (False, True)
    assert credits("balance", "--account", example.account_id, "--json").json["available"] == 47


def test_history_lists_the_members_entries_newest_first(credits, example):
    assert credits("allocate", "--member", example.member_id, -1, "--json").json["amount"] == 1
    page = credits("history", "--member", example.member_id, "--json").json
    assert [e["kind"] for e in page["entries"]] == ["reclaim", "allocate"]
    assert [e["balance_after"] for e in page["entries"]] == [4, 5]


def test_tree_without_json_prints_a_readable_tree(credits, example):
    run = credits("tree", example.account_id)
    assert run.code == 0 and run.err == ""
    assert "Acme" in run.out and "pool: 40" in run.out
    assert "James" in run.out and "remaining: 5" in run.out


# ---------------------------------------------------------------- one JSON object per command

JSON_COMMANDS = [
    ["db", "upgrade", "--json"],
    ["account", "create", "Globex", "--json"],
    ["account", "create", "Globex", "--credits", "3", "--json"],
    ["account", "topup", "{a}", "5", "--json"],
    ["account", "topup", "{a}", "5", "--key", "order-9", "--json"],
    ["workspace", "create", "{a}", "Ops", "--json"],
    ["member", "add", "{w}", "Ann", "--role", "admin", "--json"],
    ["allocate", "--workspace", "{w}", "1", "--json"],
    ["allocate", "--member", "{m}", "--set", "3", "--json"],
    ["allocate", "--member", "{m}", "-2", "--json"],
    ["balance", "--account", "{a}", "--json"],
    ["balance", "--workspace", "{w}", "--json"],
    ["balance", "--member", "{m}", "--json"],
    ["tree", "{a}", "--json"],
    ["history", "--member", "{m}", "--json"],
    ["history", "--account", "{a}", "--limit", "1", "--json"],
    ["quote", "email", "--json"],
    ["quote", "gift_card", "--denomination", "25", "--json"],
    ["reconcile", "--json"],
    ["--json", "tree", "{a}"],
    ["--json", "balance", "--member", "{m}"],
    ["--json", "--as", "{m}", "balance", "--member", "{m}"],
]


@pytest.mark.parametrize("argv", JSON_COMMANDS, ids=lambda argv: " ".join(argv))
def test_every_command_with_json_prints_exactly_one_json_object(credits, example, argv):
    run = credits(*fill(argv, example))
    assert run.code == 0, run.err
    assert run.err == ""
    assert run.out.count("\n") == 1 and run.out.endswith("\n")
    assert isinstance(json.loads(run.out), dict)


# ---------------------------------------------------------------- bad input, every command

BAD_INPUT = [
    # (argv, exit code, what stderr must say)
    (["db", "upgrade", "--revision", "nope"], 2, "'nope'"),
    (["db", "upgrade", "surplus"], 2, "unexpected extra argument (surplus)"),
    (["--database-url", "mysql://x/y", "db", "upgrade"], 2, "CREDITS_DATABASE_URL"),
    (["account", "create"], 2, "Missing argument 'NAME'"),
    (["account", "create", ""], 2, "account name must not be empty"),
    (["account", "create", "   "], 2, "account name must not be empty"),
    (["account", "create", "x" * 201], 2, "the limit is 200"),
    (["account", "create", "Globex", "--credits", "-1"], 2, "--credits must be zero or positive"),
    (["account", "create", "Globex", "--credits", "ten"], 2, "'ten' is not a valid integer"),
    (["account", "create", "Globex", "--credits", "1.5"], 2, "'1.5' is not a valid integer"),
    (["account", "topup", "{a}", "0"], 2, "amount must be positive, got 0"),
    (["account", "topup", "{a}", "-5"], 2, "amount must be positive, got -5"),
    (["account", "topup", "{a}", "2.5"], 2, "'2.5' is not a valid integer"),
    (["account", "topup", "{a}", "lots"], 2, "'lots' is not a valid integer"),
    (["account", "topup", "{a}", str(10**13)], 2, "above the limit"),
    (["account", "topup", "acme", "5"], 2, "'acme' is not a valid integer"),
    (["account", "topup", "999", "5"], 3, "account 999 does not exist"),
    (["account", "topup", "{a}"], 2, "Missing argument 'N'"),
    (["workspace", "create", "999", "Ops"], 3, "account 999 does not exist"),
    (["workspace", "create", "acme", "Ops"], 2, "'acme' is not a valid integer"),
    (["workspace", "create", "{a}", ""], 2, "workspace name must not be empty"),
    (["member", "add", "999", "Ann"], 3, "workspace 999 does not exist"),
    (["member", "add", "sales", "Ann"], 2, "'sales' is not a valid integer"),
    (["member", "add", "{w}", ""], 2, "member name must not be empty"),
    (["member", "add", "{w}", "Ann", "--role", "boss"], 2, "'boss' is not one of"),
    (["allocate", "--workspace", "{w}", "--member", "{m}", "1"], 2, "--workspace | --member"),
    (["allocate", "1"], 2, "give exactly one of --workspace | --member"),
    (["allocate", "--member", "{m}"], 2, "give exactly one of N or --set N"),
    (["allocate", "--member", "{m}", "1", "--set", "2"], 2, "give exactly one of N or --set N"),
    (["allocate", "--member", "{m}", "abc"], 2, "'abc' is not a whole number"),
    (["allocate", "--member", "{m}", "1.5"], 2, "'1.5' is not a whole number"),
    (["allocate", "--member", "{m}", "0"], 2, "non-zero whole number, got 0"),
    (["allocate", "--member", "{m}", "--set", "-1"], 2, "set_to must be zero or positive"),
    (["allocate", "--member", "{m}", "--set", "x"], 2, "'x' is not a valid integer"),
    (["allocate", "--member", "james", "1"], 2, "'james' is not a valid integer"),
    (["allocate", "--member", "999", "1"], 3, "member 999 does not exist"),
    (["allocate", "--workspace", "999", "1"], 3, "workspace 999 does not exist"),
    (["allocate", "--member", "{m}", "6"], 5, "has 5 credits available, 6 needed"),
    (["allocate", "--member", "{m}", "-6"], 5, "has 5 credits available, 6 needed"),
    (["allocate", "--workspace", "{w}", "41"], 5, "has 40 credits available, 41 needed"),
    (["balance"], 2, "give exactly one of --account | --workspace | --member"),
    (["balance", "--account", "{a}", "--member", "{m}"], 2, "give exactly one of"),
    (["balance", "--member", "x"], 2, "'x' is not a valid integer"),
    (["balance", "--member", "999"], 3, "member 999 does not exist"),
    (["balance", "--workspace", "999"], 3, "workspace 999 does not exist"),
    (["balance", "--account", "999"], 3, "account 999 does not exist"),
    (["tree"], 2, "Missing argument 'ACCOUNT_ID'"),
    (["tree", "acme"], 2, "'acme' is not a valid integer"),
    (["tree", "999"], 3, "account 999 does not exist"),
    (["history"], 2, "give exactly one of --account | --workspace | --member"),
    (["history", "--member", "{m}", "--limit", "0"], 2, "'--limit': 0 is not in the range"),
    (["history", "--member", "{m}", "--limit", "501"], 2, "'--limit': 501 is not in the range"),
    (["history", "--member", "{m}", "--before", "x"], 2, "'x' is not a valid integer"),
    (["history", "--account", "999"], 3, "account 999 does not exist"),
    (["quote"], 2, "Missing argument 'ACTION'"),
    (["quote", "fax"], 2, "unknown action 'fax'"),
    (["quote", "postcard"], 2, "country is required to price a postcard"),
    (["quote", "postcard", "--country", "Narnia"], 2, "unknown country 'Narnia'"),
    (["quote", "gift_card"], 2, "denomination is required to price a gift card"),
    (["quote", "gift_card", "--denomination", "0"], 2, "denomination must be positive, got 0"),
    (["quote", "gift_card", "--denomination", "-5"], 2, "denomination must be positive, got -5"),
    (["quote", "gift_card", "--denomination", "10.5"], 2, "got '10.5'"),
    (["quote", "gift_card", "--denomination", "²"], 2, "got '²'"),
    (["quote", "gift_card", "--denomination", "7"], 2, "denomination 7 is not offered"),
    (["quote", "email", "--denomination", "5"], 2, "denomination applies only to gift cards"),
    (["reconcile", "surplus"], 2, "unexpected extra argument (surplus)"),
    (["balance", "--member", "{m}", "--as", "james"], 2, "--as takes a member id"),
    (["--as", "james", "tree", "{a}"], 2, "--as takes a member id"),
    (["balance", "--member", "{m}", "--as", "-1"], 2, "--as takes a member id"),
    (["balance", "--member", "{m}", "--as", "²"], 2, "--as takes a member id"),
    (["balance", "--member", "{m}", "--as", "999"], 4, "acting member 999 does not exist"),
]


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [pytest.param(argv, code, message, id=" ".join(argv)) for argv, code, message in BAD_INPUT],
)
def test_bad_input_exits_non_zero_prints_nothing_and_names_the_problem(
    credits, db, example, argv, code, message
):
    # given the worked example
    before = snapshot(db, example)
    # when a command gets bad input
    run = credits(*fill(argv, example))
    # then it fails with its exit code, an empty stdout and a message saying what is wrong
    assert (run.code, run.out) == (code, "")
    assert message in run.err
    assert "Traceback" not in run.err
    # and nothing changed
    assert snapshot(db, example) == before


@pytest.mark.parametrize(
    "argv",
    [
        ["tree", "99999999999999999999"],
        ["balance", "--member", "99999999999999999999"],
        ["history", "--account", "99999999999999999999"],
        ["history", "--member", "{m}", "--before", "99999999999999999999"],
        ["allocate", "--member", "99999999999999999999", "1"],
        ["account", "topup", "99999999999999999999", "1"],
        ["workspace", "create", "99999999999999999999", "Ops"],
        ["member", "add", "99999999999999999999", "Ann"],
        ["balance", "--member", "{m}", "--as", "99999999999999999999"],
    ],
    ids=lambda argv: " ".join(argv),
)
def test_an_id_beyond_bigint_is_a_usage_error_not_a_crash(credits, example, argv):
    run = credits(*fill(argv, example))
    assert (run.code, run.out) == (2, "")
    assert "99999999999999999999" in run.err
    assert "Traceback" not in run.err


def test_errors_under_json_are_one_json_object_on_stderr(credits, example):
    run = credits("allocate", "--member", example.member_id, 6, "--json")
    assert (run.code, run.out) == (5, "")
    error = json.loads(run.err)
    assert error["error"] == "InsufficientCredits"
    assert "6 needed" in error["message"]


def test_unknown_country_error_under_json_names_the_country(credits):
    run = credits("quote", "postcard", "--country", "Atlantis", "--json")
    assert (run.code, run.out) == (2, "")
    error = json.loads(run.err)
    assert error["error"] == "UnknownCountry"
    assert "'Atlantis'" in error["message"]


def test_reusing_an_idempotency_key_for_another_amount_is_refused(credits, db, example):
    # given a top-up under key po-7
    first = credits("account", "topup", example.account_id, 5, "--key", "po-7", "--json").json
    assert first["replayed"] is False
    before = snapshot(db, example)
    # when the same key comes with another amount
    run = credits("account", "topup", example.account_id, 6, "--key", "po-7")
    # then it is a conflict and the pool is still 40 + 5
    assert (run.code, run.out) == (6, "")
    assert "'po-7' was already used for a different request" in run.err
    assert snapshot(db, example) == before
    assert before["account"]["available"] == 45


def test_reusing_an_allocation_key_for_another_target_is_refused(credits, db, example):
    first = credits("allocate", "--member", example.member_id, 1, "--key", "ui-1", "--json").json
    assert first["replayed"] is False
    before = snapshot(db, example)
    run = credits("allocate", "--workspace", example.workspace_id, 1, "--key", "ui-1")
    assert (run.code, run.out) == (6, "")
    assert "'ui-1'" in run.err
    assert snapshot(db, example) == before


@pytest.mark.parametrize(
    "argv",
    [
        ["account", "create", "Acme"],
        ["account", "topup", "1", "5"],
        ["workspace", "create", "1", "Sales"],
        ["member", "add", "1", "James"],
        ["allocate", "--workspace", "1", "5"],
        ["balance", "--member", "1"],
        ["tree", "1"],
        ["history", "--member", "1"],
        ["reconcile", "--json"],
    ],
    ids=lambda argv: " ".join(argv),
)
def test_a_database_never_migrated_says_to_run_db_upgrade(
    credits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv
):
    monkeypatch.setenv("CREDITS_DATABASE_URL", f"sqlite:///{tmp_path / 'never-migrated.db'}")
    run = credits(*argv)
    assert (run.code, run.out) == (8, "")
    assert "no credits schema" in run.err
    assert "run `credits db upgrade` first" in run.err


def test_a_database_that_cannot_be_opened_is_reported_not_raised(credits, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'credits.db'}"
    run = credits("--database-url", url, "tree", "1")
    assert (run.code, run.out) == (11, "")
    assert "database error" in run.err


# ---------------------------------------------------------------- role rules via --as


@pytest.fixture
def team(db: Database, example: Tree) -> dict[str, int]:
    """James (member), Ann (member) and Alice (admin) in Sales; Bo in another workspace."""
    ann = directory.add_member(db, example.workspace_id, "Ann")
    alice = directory.add_member(db, example.workspace_id, "Alice", role="admin")
    support_ws = directory.create_workspace(db, example.account_id, "Support")
    bo = directory.add_member(db, support_ws.id, "Bo")
    return {
        "account": example.account_id,
        "sales": example.workspace_id,
        "support": support_ws.id,
        "james": example.member_id,
        "ann": ann.id,
        "alice": alice.id,
        "bo": bo.id,
    }


def test_a_member_reads_their_own_balance(credits, team):
    wallet = credits("balance", "--member", team["james"], "--as", team["james"], "--json").json
    assert (wallet["name"], wallet["available"], wallet["held"]) == ("James", 5, 0)


@pytest.mark.parametrize(
    "argv",
    [
        ["tree", "{account}"],
        ["balance", "--member", "{ann}"],
        ["balance", "--workspace", "{sales}"],
        ["balance", "--account", "{account}"],
        ["history", "--member", "{ann}"],
    ],
    ids=lambda argv: " ".join(argv),
)
def test_a_member_cannot_read_the_tree_or_other_wallets(credits, team, argv):
    run = credits(*[a.format(**team) for a in argv], "--as", team["james"])
    assert (run.code, run.out) == (4, "")
    assert f"member:{team['james']} may not read" in run.err


@pytest.mark.parametrize(
    "argv",
    [
        ["allocate", "--member", "{james}", "1"],
        ["allocate", "--member", "{ann}", "1"],
        ["allocate", "--member", "{james}", "-1"],
        ["allocate", "--workspace", "{sales}", "1"],
        ["allocate", "--member", "{james}", "--set", "0"],
        ["account", "topup", "{account}", "5"],
        ["member", "add", "{sales}", "Eve"],
        ["workspace", "create", "{account}", "Shadow"],
    ],
    ids=lambda argv: " ".join(argv),
)
def test_a_member_cannot_move_credits_or_change_the_tree_and_nothing_changes(
    credits, db, example, team, argv
):
    before = snapshot(db, example)
    run = credits("--as", team["james"], *[a.format(**team) for a in argv])
    assert (run.code, run.out) == (4, "")
    assert f"member:{team['james']} may not" in run.err
    assert snapshot(db, example) == before


def test_an_admin_allocates_to_members_of_their_own_workspace(credits, team):
    moved = credits("allocate", "--member", team["ann"], 2, "--as", team["alice"], "--json").json
    assert moved["amount"] == 2
    assert credits("balance", "--member", team["ann"], "--json").json["available"] == 2
    assert credits("balance", "--workspace", team["sales"], "--json").json["available"] == 3


def test_an_admin_reads_the_tree_of_their_account(credits, team):
    tree = credits("tree", team["account"], "--as", team["alice"], "--json").json
    assert tree["account"]["available"] == 40


def test_an_admin_cannot_allocate_to_another_workspace_and_nothing_changes(
    credits, db, example, team
):
    before = snapshot(db, example)
    for argv in (
        ["allocate", "--member", team["bo"], 1],
        ["allocate", "--workspace", team["support"], 1],
        ["account", "topup", team["account"], 5],
    ):
        run = credits(*argv, "--as", team["alice"])
        assert (run.code, run.out) == (4, ""), argv
        assert f"member:{team['alice']} may not" in run.err
    assert snapshot(db, example) == before


# ---------------------------------------------------------------- reconcile


def test_reconcile_exits_non_zero_and_names_a_corrupted_wallet(credits, db, example):
    # given James's wallet changed behind the ledger's back
    wallet_id = balances.balance(db, "member", example.member_id).wallet_id
    with db.unit_of_work() as session:
        session.execute(
            text("UPDATE wallets SET available = available + 3 WHERE id = :id"), {"id": wallet_id}
        )
    # when reconcile runs
    run = credits("reconcile", "--json")
    # then it fails, reports the drift and names the wallet
    assert run.code != 0
    report = json.loads(run.out)
    assert report["ok"] is False
    assert any(
        p["wallet_id"] == wallet_id and p["invariant"] == "balance_equals_entries"
        for p in report["problems"]
    )
    assert f"drift: wallet {wallet_id} available is 8 but its entries sum to 5" in run.err


def test_reconcile_of_a_sound_ledger_reports_the_figures(credits, example):
    report = credits("reconcile", "--json").json
    assert report["ok"] is True and report["problems"] == []
    assert report["figures"]["purchased"] == 50
    assert report["figures"]["member_wallets"] == 5


# ---------------------------------------------------------------- quote


@pytest.mark.parametrize(
    ("argv", "credits_needed"),
    [
        (["handwritten_note"], 5),
        (["postcard", "--country", "US"], 1),
        (["postcard", "--country", "usa"], 1),
        (["postcard", "--country", "United Kingdom"], 2),
        (["gift_card", "--denomination", "25"], 33),
        (["gift_card", "--denomination", "5"], 13),
        (["email"], 0),
        (["task"], 0),
        (["linkedin"], 0),
        (["accept_lead"], 1),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else str(v),
)
def test_quote_prices_each_action_under_the_builtin_catalog(credits, argv, credits_needed):
    quoted = credits("quote", *argv, "--json").json
    assert quoted["action"] == argv[0]
    assert quoted["credits"] == credits_needed
    assert quoted["catalog_version"] == "2026-11-01"


def test_quote_reports_the_normalised_country(credits):
    quoted = credits("quote", "postcard", "--country", "United Kingdom", "--json").json
    assert quoted["country"] == "GB"


def test_quote_uses_the_accept_lead_setting_and_a_new_catalog_version(
    credits, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("CREDITS_ACCEPT_LEAD_CREDITS", "3")
    quoted = credits("quote", "accept_lead", "--json").json
    assert quoted["credits"] == 3
    assert quoted["catalog_version"] == "2026-11-01+lead3"


def test_quote_reads_a_custom_catalog_from_the_catalog_path_setting(
    credits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    path = tmp_path / "catalog.json"
    path.write_text(
        json.dumps(
            {
                "version": "custom-1",
                "handwritten_note": 7,
                "postcard_domestic": 1,
                "postcard_international": 3,
                "gift_card_fee": 4,
                "gift_card_denominations": [10],
            }
        )
    )
    monkeypatch.setenv("CREDITS_CATALOG_PATH", str(path))
    assert credits("quote", "handwritten_note", "--json").json == {
        "action": "handwritten_note",
        "credits": 7,
        "catalog_version": "custom-1",
        "country": None,
        "denomination": None,
    }
    run = credits("quote", "gift_card", "--denomination", "25")
    assert (run.code, run.out) == (2, "")
    assert "allowed: 10" in run.err


def test_quote_with_a_broken_catalog_file_names_the_file(
    credits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    monkeypatch.setenv("CREDITS_CATALOG_PATH", str(path))
    run = credits("quote", "email")
    assert (run.code, run.out) == (2, "")
    assert str(path) in run.err and "is not JSON" in run.err
