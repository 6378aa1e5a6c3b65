"""The ``credits`` command line, driven through ``entrypoints.cli.main`` as a user would run
it.

Each test points ``CREDITS_DATABASE_URL`` at its own SQLite file, and
``CREDITS_REDIS_URL`` at an in-process fakeredis (outcome events of cancels). A successful command
with ``--json`` prints exactly one JSON object on stdout; a failed one prints nothing on
stdout, says what is wrong on stderr and exits non-zero.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pytest
from sqlalchemy import select, text

from entrypoints.cli import main
from shared.adapters.events import EventStream
from shared.adapters.redis_client import make_redis
from shared.config import load_settings
from shared.db import Database
from shared.models import Wallet
from shared.services import balances, directory, jobs
from tests.factories import Tree, accepted_job, email, funded_member, note, postcard

pytestmark = pytest.mark.usefixtures("clean_environment")

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


@pytest.fixture
def redis_url() -> str:
    return f"memory://{uuid.uuid4().hex}"


@pytest.fixture
def credits(
    sqlite_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    """Run ``credits ARGS...`` against this test's migrated SQLite database."""
    monkeypatch.setenv("CREDITS_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("CREDITS_REDIS_URL", redis_url)

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
    ["topup", "{a}", "5", "--json"],
    ["accounts", "--json"],
    ["workspaces", "{a}", "--json"],
    ["members", "--account", "{a}", "--json"],
    ["members", "--workspace", "{w}", "--all", "--json"],
    ["member", "rename", "{m}", "Jim", "--json"],
    ["member", "role", "{m}", "admin", "--json"],
    ["member", "deactivate", "{m}", "--json"],
    ["rename", "account", "{a}", "Acme Inc", "--json"],
    ["rename", "workspace", "{w}", "Customer Success", "--json"],
    ["jobs", "--json"],
    ["jobs", "--parked", "--member", "{m}", "--json"],
    ["dead-letters", "--json"],
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
    (["account", "create", "Globex", "--credits", "-1"], 2, "'--credits': -1 is not in the range"),
    (["account", "create", "Globex", "--credits", "ten"], 2, "'ten' is not a valid integer"),
    (["account", "create", "Globex", "--credits", "1.5"], 2, "'1.5' is not a valid integer"),
    (["account", "topup", "{a}", "0"], 2, "'N': 0 is not in the range 1<=x"),
    (["account", "topup", "{a}", "-5"], 2, "'N': -5 is not in the range 1<=x"),
    (["topup", "{a}", "0"], 2, "'N': 0 is not in the range 1<=x"),
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
    (["allocate", "--member", "{m}", "0"], 2, "0 moves nothing: give a non-zero N"),
    (["allocate", "--member", "{m}", "--set", "-1"], 2, "'--set': -1 is not in the range 0<=x"),
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
    (["balance", "--member", "{m}", "--as", "james"], 2, "--as: takes a member id"),
    (["--as", "james", "tree", "{a}"], 2, "--as: takes a member id"),
    (["balance", "--member", "{m}", "--as", "-1"], 2, "--as: takes a member id"),
    (["balance", "--member", "{m}", "--as", "²"], 2, "--as: takes a member id"),
    (["balance", "--member", "{m}", "--as", "999"], 4, "acting member 999 does not exist"),
    (["--as", "999", "tree", "{a}"], 4, "acting member 999 does not exist"),
    (["db", "upgrade", "--as", "{m}"], 4, "may not migrate the schema: only support may"),
    (["reconcile", "--as", "{m}"], 4, "may not reconcile: only support may"),
    (["dead-letters", "--as", "{m}"], 4, "may not read dead letters: only support may"),
    (["account", "create", "Shadow", "--as", "{m}"], 4, "may not create accounts"),
    (["rename", "account", "{a}", "Mine", "--as", "{m}"], 4, "may not rename the account"),
    (["member", "role", "{m}", "owner", "--as", "{m}"], 4, "may not make members owners"),
    (["account", "create", "Evil\x1b[2JCorp"], 2, "must not contain control characters (U+001B)"),
    (["member", "add", "{w}", "Ding\x07"], 2, "must not contain control characters (U+0007)"),
    (["member", "rename", "{m}", "Evil\x1b]0;pwned\x07"], 2, "(U+0007, U+001B)"),
    (["rename", "workspace", "{w}", "\x1b[31mRed"], 2, "must not contain control characters"),
    (["members"], 2, "give exactly one of --account or --workspace"),
    (["members", "--account", "999"], 3, "account 999 does not exist"),
    (["workspaces", "999"], 3, "account 999 does not exist"),
    (["member", "role", "{m}", "boss"], 2, "'boss' is not one of"),
    (["member", "rename", "999", "Ann"], 3, "member 999 does not exist"),
    (["member", "deactivate", "999"], 3, "member 999 does not exist"),
    (["jobs", "--status", "lost"], 2, "'lost' is not one of"),
    (["jobs", "--parked", "--status", "completed"], 2, "--parked and --status name different"),
    (["jobs", "--member", "999"], 3, "member 999 does not exist"),
    (["jobs", "--limit", "0"], 2, "'--limit': 0 is not in the range"),
    (["job", "nope"], 3, "job 'nope' does not exist"),
    (["cancel", "nope", "--member", "{m}"], 3, "job 'nope' does not exist"),
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
        session.commit()
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


# ---------------------------------------------------------------- listings and management


@pytest.fixture
def jobs_of(db: Database, team: dict[str, int]) -> dict[str, int]:
    """James (5 credits): a note sent, then a postcard parked; Ann (0): a free email sent."""
    accepted_job(db, note("n-1", team["james"], flow_id="flow-7"))
    accepted_job(db, postcard("p-1", team["james"]))
    accepted_job(db, email("e-1", team["ann"], flow_id="flow-7"))
    return team


def job_ids(run: Run) -> list[str]:
    return [j["job_id"] for j in run.json["jobs"]]


def test_accounts_workspaces_and_members_are_listed(credits, team):
    accounts = credits("accounts", "--json").json["accounts"]
    assert accounts == [{"id": team["account"], "name": "Acme", "available": 40}]
    workspaces = credits("workspaces", team["account"], "--json").json["workspaces"]
    assert [(w["name"], w["available"]) for w in workspaces] == [("Sales", 5), ("Support", 0)]
    sales = credits("members", "--workspace", team["sales"], "--json").json["members"]
    assert [(m["name"], m["role"], m["available"]) for m in sales] == [
        ("James", "member", 5), ("Ann", "member", 0), ("Alice", "admin", 0)
    ]  # fmt: skip
    everyone = credits("members", "--account", team["account"], "--json").json["members"]
    assert [m["name"] for m in everyone] == ["James", "Ann", "Alice", "Bo"]
    table = credits("members", "--account", team["account"])
    assert table.code == 0 and "Alice" in table.out and "admin" in table.out


def test_a_member_is_renamed_given_a_role_and_deactivated(credits, team):
    # given Ann with 2 credits
    credits("allocate", "--member", team["ann"], 2, "--json")
    # when she is renamed, made admin and then deactivated
    renamed = credits("member", "rename", team["ann"], "Ann Lee", "--json").json
    role = credits("member", "role", team["ann"], "admin", "--json").json
    gone = credits("member", "deactivate", team["ann"], "--json").json
    # then each step says what it did
    assert renamed["name"] == "Ann Lee"
    assert (role["role"], role["was"]) == ("admin", "member")
    assert (gone["active"], gone["returned"]) == (False, 2)
    # and she is listed only with --all, her credits back in the workspace pool
    sales = credits("members", "--workspace", team["sales"], "--json").json["members"]
    assert [m["name"] for m in sales] == ["James", "Alice"]
    every = credits("members", "--workspace", team["sales"], "--all", "--json").json["members"]
    assert ("Ann Lee", False) in [(m["name"], m["active"]) for m in every]
    assert credits("balance", "--workspace", team["sales"], "--json").json["available"] == 5
    # and she can no longer act
    run = credits("balance", "--member", team["ann"], "--as", team["ann"])
    assert (run.code, run.out) == (4, "")
    assert f"acting member {team['ann']} does not exist" in run.err


def test_an_account_and_a_workspace_are_renamed(credits, example):
    credits("rename", "account", example.account_id, "Acme Inc", "--json")
    credits("rename", "workspace", example.workspace_id, "Customer Success", "--json")
    tree = credits("tree", example.account_id, "--json").json
    assert tree["account"]["name"] == "Acme Inc"
    assert tree["workspaces"][0]["name"] == "Customer Success"


def test_jobs_are_listed_newest_first_and_filtered(credits, jobs_of):
    james = jobs_of["james"]
    assert job_ids(credits("jobs", "--json")) == ["e-1", "p-1", "n-1"]
    assert job_ids(credits("jobs", "--member", james, "--json")) == ["p-1", "n-1"]
    assert job_ids(credits("jobs", "--status", "submitted", "--json")) == ["e-1", "n-1"]
    assert job_ids(credits("jobs", "--parked", "--json")) == ["p-1"]
    assert job_ids(credits("jobs", "--flow", "flow-7", "--json")) == ["e-1", "n-1"]
    assert job_ids(credits("jobs", "--account", jobs_of["account"], "--json")) == [
        "e-1", "p-1", "n-1"
    ]  # fmt: skip
    assert job_ids(credits("jobs", "--since", "2999-01-01", "--json")) == []
    assert job_ids(credits("jobs", "--since", "2000-01-01", "--json")) == ["e-1", "p-1", "n-1"]


def test_jobs_page_with_a_cursor(credits, jobs_of):
    first = credits("jobs", "--limit", 2, "--json").json
    assert [j["job_id"] for j in first["jobs"]] == ["e-1", "p-1"]
    rest = credits("jobs", "--limit", 2, "--before", first["next_before"], "--json").json
    assert ([j["job_id"] for j in rest["jobs"]], rest["next_before"]) == (["n-1"], None)
    table = credits("jobs", "--limit", 2)
    assert f"more: --before {first['next_before']}" in table.out


def test_a_member_lists_only_their_own_jobs_and_an_admin_the_accounts(credits, jobs_of):
    assert job_ids(credits("jobs", "--as", jobs_of["ann"], "--json")) == ["e-1"]
    assert job_ids(credits("jobs", "--as", jobs_of["alice"], "--json")) == ["e-1", "p-1", "n-1"]
    run = credits("jobs", "--member", jobs_of["james"], "--as", jobs_of["ann"])
    assert (run.code, run.out) == (4, "")


def test_cancel_ends_a_parked_job_once_and_tells_its_flow_engine(credits, jobs_of, redis_url):
    james = jobs_of["james"]
    # when the parked postcard is cancelled, twice
    first = credits("cancel", "p-1", "--member", james, "--json").json
    again = credits("cancel", "p-1", "--member", james, "--json").json
    # then it ended cancelled once, and the flow engine heard it once
    assert (first["status"], first["replayed"]) == ("cancelled", False)
    assert (again["status"], again["replayed"]) == ("cancelled", True)
    stream = EventStream(make_redis(redis_url), load_settings(redis_url=redis_url).stream)
    assert [(e["job_id"], e["status"]) for e in stream.all()] == [("p-1", "cancelled")]
    assert credits("job", "p-1", "--json").json["status"] == "cancelled"


def test_a_job_that_is_not_parked_cannot_be_cancelled(credits, db, jobs_of):
    before = snapshot(db, Tree(jobs_of["account"], jobs_of["sales"], jobs_of["james"]))
    run = credits("cancel", "n-1", "--member", jobs_of["james"])
    assert (run.code, run.out) == (2, "")
    assert "only a job awaiting credits can be cancelled" in run.err
    assert credits("job", "n-1", "--json").json["status"] == "submitted"
    assert snapshot(db, Tree(jobs_of["account"], jobs_of["sales"], jobs_of["james"])) == before


def test_a_job_id_used_by_two_members_needs_the_member_named(credits, db, jobs_of):
    accepted_job(db, note("n-1", jobs_of["ann"]))
    run = credits("job", "n-1")
    assert (run.code, run.out) == (2, "")
    assert "belongs to several members: name the member" in run.err
    found = credits("job", "n-1", "--member", jobs_of["ann"], "--json").json
    assert (found["member_id"], found["status"]) == (jobs_of["ann"], "awaiting_credits")


def test_version_prints_the_installed_version(credits):
    run = credits("--version")
    assert (run.code, run.err) == (0, "")
    assert run.out == f"credits, version {version('credits-worker')}\n"


def test_topup_is_also_a_top_level_command(credits, example):
    moved = credits("topup", example.account_id, 5, "--key", "po-1", "--json").json
    again = credits("account", "topup", example.account_id, 5, "--key", "po-1", "--json").json
    assert (moved["replayed"], again["replayed"]) == (False, True)
    assert credits("balance", "--account", example.account_id, "--json").json["available"] == 45


def test_two_accounts_can_each_use_the_same_top_up_key(credits, db, example):
    other = directory.create_account(db, "Globex")
    first = credits("topup", example.account_id, 5, "--key", "q3-bonus", "--json").json
    second = credits("topup", other.id, 7, "--key", "q3-bonus", "--json").json
    assert (first["replayed"], second["replayed"]) == (False, False)
    assert credits("balance", "--account", other.id, "--json").json["available"] == 7
    assert credits("balance", "--account", example.account_id, "--json").json["available"] == 45


# ---------------------------------------------------------------- what the output shows


def test_set_to_the_current_balance_moves_nothing_and_writes_nothing(credits, example):
    before = credits("history", "--member", example.member_id, "--json").json
    moved = credits("allocate", "--member", example.member_id, "--set", 5, "--json").json
    assert (moved["transaction_id"], moved["amount"], moved["available_after"]) == (None, 0, {})
    assert credits("history", "--member", example.member_id, "--json").json == before


def external_balance(db: Database) -> int:
    """The external wallet: minus every credit ever purchased."""
    with db.unit_of_work() as session:
        return session.scalar(select(Wallet.available).where(Wallet.system_name == "external"))


def test_top_up_and_allocate_output_show_no_system_wallet(credits, db, example):
    pools = {k: str(balances.balance(db, k, i).wallet_id) for k, i in
             (("account", example.account_id), ("workspace", example.workspace_id),
              ("member", example.member_id))}  # fmt: skip
    # when support tops up (and retries), and credits move down the tree
    topped = credits("topup", example.account_id, 5, "--key", "po-1", "--json").json
    replayed = credits("topup", example.account_id, 5, "--key", "po-1", "--json").json
    moved = credits("allocate", "--workspace", example.workspace_id, 2, "--json").json
    given = credits("allocate", "--member", example.member_id, 1, "--json").json
    shown = credits("topup", example.account_id, 1)
    # then each shows the balances of the pools it moved between, and nothing else
    assert replayed["replayed"] is True
    assert set(topped["available_after"]) == {pools["account"]}
    assert replayed["available_after"] == topped["available_after"]
    assert set(moved["available_after"]) == {pools["account"], pools["workspace"]}
    assert set(given["available_after"]) == {pools["workspace"], pools["member"]}
    # and the external wallet's balance shows nowhere, for people either
    assert external_balance(db) == -56
    assert "-55" not in json.dumps([topped, replayed, moved, given])
    assert shown.code == 0 and "available_after" in shown.out and "-56" not in shown.out


def test_names_that_look_like_markup_print_as_typed_in_the_tree_and_a_job(credits, db):
    # given Mallory[/] of "[bold]Acme[/bold]", whose note is parked with a reason naming her
    tree = funded_member(db, name="Mallory[/]")
    directory.rename(db, "account", tree.account_id, "[bold]Acme[/bold]")
    directory.rename(db, "workspace", tree.workspace_id, "[red]Sales")
    accepted_job(db, note("j-1", tree.member_id))
    # when the operator reads the tree and the job
    shown_tree = credits("tree", tree.account_id)
    shown_job = credits("job", "j-1")
    # then both print, every name exactly as typed
    assert (shown_tree.code, shown_tree.err) == (0, "")
    assert f"Mallory[/] (member {tree.member_id}, member) remaining: 0" in shown_tree.out
    assert f"[bold]Acme[/bold] (account {tree.account_id})" in shown_tree.out
    assert f"[red]Sales (workspace {tree.workspace_id})" in shown_tree.out
    assert (shown_job.code, shown_job.err) == (0, "")
    assert f"member {tree.member_id} (Mallory[/]) has 0 credits available" in shown_job.out


def test_control_characters_a_vendor_sent_are_printed_escaped(credits, db):
    tree = funded_member(db, member_credits=10)
    view = accepted_job(db, note("j-1", tree.member_id))
    jobs.refund(db, view.pk, reason="refused: \x1b[2J\x07 screen wiped")
    run = credits("job", "j-1")
    assert run.code == 0
    assert "\x1b" not in run.out and "\x07" not in run.out
    assert "refused: \\x1b[2J\\x07 screen wiped" in run.out


def test_piped_tables_print_long_job_ids_whole(credits, db):
    tree = funded_member(db, member_credits=10)
    job_id = "flow-2026-11-27:step-0042:lead-" + "7" * 29
    assert len(job_id) == 60
    accepted_job(db, note(job_id, tree.member_id))
    for argv in (["jobs"], ["history", "--member", tree.member_id], ["job", job_id]):
        run = credits(*argv)
        assert run.code == 0, run.err
        assert job_id in run.out, argv


@pytest.mark.parametrize(
    "argv",
    [["jobs"], ["jobs", "--parked"], ["dead-letters"], ["workspaces", "{a}"],
     ["members", "--workspace", "{w}"], ["history", "--workspace", "{w}"]],
    ids=lambda argv: " ".join(argv),
)  # fmt: skip
def test_an_empty_listing_prints_none(credits, db, argv):
    bare = directory.create_account(db, "Bare")
    workspace = directory.create_workspace(db, directory.create_account(db, "Empty").id, "Nobody")
    run = credits(*[a.format(a=bare.id, w=workspace.id) for a in argv])
    assert (run.code, run.out, run.err) == (0, "none\n", "")


def test_no_accounts_prints_none(credits):
    assert credits("accounts").out == "none\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["allocate", "--member", "x", "1", "--json"],
        ["--json", "tree"],
        ["--json", "members"],
        ["jobs", "--parked", "--status", "completed", "--json"],
        ["--json", "no-such-command"],
        ["account", "create", "--json"],
        ["balance", "--member", "1", "--as", "james", "--json"],
    ],
    ids=lambda argv: " ".join(argv),
)
def test_a_usage_error_under_json_is_one_json_object_on_stderr(credits, argv):
    run = credits(*argv)
    assert (run.code, run.out) == (2, "")
    assert run.err.count("\n") == 1
    error = json.loads(run.err)
    assert error["error"] == "UsageError"
    assert error["message"]


# ---------------------------------------------------------------- other accounts, other roles


def test_an_admin_cannot_reclaim_from_an_owner_or_another_admin(credits, db, example, team):
    owner = directory.add_member(db, team["sales"], "Olga", role="owner")
    peer = directory.add_member(db, team["sales"], "Al", role="admin")
    for member in (owner.id, peer.id):
        credits("allocate", "--member", member, 2, "--json")
    before = snapshot(db, example)
    for member, role in ((owner.id, "owner"), (peer.id, "admin")):
        for how in (["-1"], ["--set", "0"]):
            run = credits("allocate", "--member", member, *how, "--as", team["alice"])
            assert (run.code, run.out) == (4, ""), (role, how)
            assert f"who is an {role}: only support or an owner may" in run.err
    assert snapshot(db, example) == before


@pytest.mark.parametrize(
    ("argv", "kind"),
    [
        (["balance", "--member", "{m}"], "m"),
        (["balance", "--workspace", "{w}"], "w"),
        (["balance", "--account", "{a}"], "a"),
        (["tree", "{a}"], "a"),
        (["history", "--member", "{m}"], "m"),
        (["workspaces", "{a}"], "a"),
        (["members", "--workspace", "{w}"], "w"),
        (["jobs", "--member", "{m}"], "m"),
        (["member", "rename", "{m}", "Spy"], "m"),
        (["allocate", "--member", "{m}", "1"], "m"),
        (["job", "j-1", "--member", "{m}"], None),
        (["cancel", "j-1", "--member", "{m}"], None),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else str(v),
)
def test_another_accounts_rows_are_not_found_exactly_like_missing_ones(
    credits, db, example, argv, kind
):
    # given Acme's James with a job, and Eve, an owner of another account
    accepted_job(db, note("j-1", example.member_id))
    eve = funded_member(db, role="owner", name="Eve").member_id
    missing_id = 999_999
    # when Eve asks about James's rows, and about rows that do not exist
    hidden = credits(*fill(argv, example), "--as", eve)
    missing = credits(*[a.format(a=missing_id, w=missing_id, m=missing_id) for a in argv],
                      "--as", eve)  # fmt: skip
    # then both answers are the same NotFound
    assert (hidden.code, hidden.out) == (3, "")
    key = str(ids(example)[kind]) if kind else None
    assert hidden.err == (missing.err.replace(str(missing_id), key) if key else missing.err)
