"""`credits send --wait`, `credits job` and `credits dead-letters` against a real worker."""

from __future__ import annotations

import json

import pytest

from shared.cli import main
from tests.factories import funded_member
from tests.integration.test_pipeline_workers import ALL_DELIVERED


@pytest.fixture
def cli_env(stack, monkeypatch):
    stack.settings_env.update(ALL_DELIVERED)
    for key, value in stack.env().items():
        if key.startswith("CREDITS_"):
            monkeypatch.setenv(key, value)
    return stack


def run(capsys, *argv: str) -> tuple[int, dict | None, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


def test_send_with_wait_prints_the_outcome_and_job_shows_its_history(cli_env, db, capsys):
    tree = funded_member(db, account_credits=20, member_credits=10)
    cli_env.start_worker("w1")
    code, out, err = run(
        capsys, "send", "--member", str(tree.member_id), "postcard", "--job-id", "cli-1",
        "--message", "Hello", "--to", "Jane Roe; 1 Main St; Springfield; IL; 62701; US",
        "--wait", "30", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert out["job_id"] == "cli-1" and out["status"] == "completed"
    assert out["cost"] == 1 and out["available"] == 9

    code, job, err = run(capsys, "job", "cli-1", "--json")
    assert code == 0, err
    assert job["status"] == "completed" and job["cost"] == 1
    assert job["hold"]["state"] == "captured"
    assert [h["to"] for h in job["history"]] == ["received", "reserved", "submitted", "completed"]


def test_send_parks_the_job_when_credits_run_short(cli_env, db, capsys):
    tree = funded_member(db, account_credits=20, member_credits=4)
    cli_env.start_worker("w1")
    code, out, err = run(
        capsys, "send", "--member", str(tree.member_id), "handwritten_note", "--message", "Hi",
        "--to", "Jane; 1 Main St; Springfield; IL; 62701; US",
        "--from", "Sam; 9 Elm St; Austin; TX; 73301; US", "--wait", "30", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert out["status"] == "awaiting_credits" and out["final"] is False


def test_send_rejects_an_invalid_job_before_publishing(cli_env, db, capsys):
    code, out, err = run(
        capsys, "send", "--member", "1", "postcard", "--message", "Hi",
        "--to", "Jane; 1 Main St; Springfield; IL; 62701; Atlantis", "--json",
    )  # fmt: skip
    assert code == 2 and out is None
    assert "recipient.country" in err and "Atlantis" in err


def test_send_with_a_malformed_address_names_the_option(cli_env, capsys):
    code, out, err = run(capsys, "send", "--member", "1", "postcard", "--to", "Jane; Main St")
    assert code == 2 and out is None
    assert "--to takes 6 parts" in err


def test_job_for_an_unknown_id_is_a_clear_error(cli_env, db, capsys):
    code, out, err = run(capsys, "job", "nope", "--json")
    assert code == 3 and out is None
    assert "job 'nope' does not exist" in err
