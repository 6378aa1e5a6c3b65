"""`credits send --wait`, `credits job` and `credits dead-letters` against a real worker."""

from __future__ import annotations

import json

import pytest

from entrypoints.cli import main
from shared.client import SEND_ACTION_TASK
from shared.queues import FLOW_QUEUE
from tests.factories import ALL_DELIVERED, as_env, funded_member, postcard
from tests.helpers import wait_until

TO = "Jane Roe; 1 Main St; Springfield; IL; 62701; US"


@pytest.fixture
def cli_env(stack, monkeypatch):
    """The CLI's environment is the workers' (database, broker, prefix, signing key)."""
    stack.settings_env.update(as_env(ALL_DELIVERED))
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
        "--message", "Hello", "--to", TO,
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


def test_send_wait_exits_14_when_the_job_parks_for_lack_of_credits(cli_env, db, capsys):
    tree = funded_member(db, account_credits=20, member_credits=4)
    cli_env.start_worker("w1")
    code, out, err = run(
        capsys, "send", "--member", str(tree.member_id), "handwritten_note", "--message", "Hi",
        "--job-id", "park-1", "--to", TO, "--from", "Sam; 9 Elm St; Austin; TX; 73301; US",
        "--wait", "30", "--json",
    )  # fmt: skip
    assert (code, out) == (14, None)
    assert json.loads(err)["error"] == "JobParked"
    assert "4 credits available, 5 needed" in err
    code, job, err = run(capsys, "job", "park-1", "--json")
    assert (code, job["status"], job["hold"]) == (0, "awaiting_credits", None)


def test_an_allocation_that_covers_a_parked_job_resumes_it_at_once_without_beat(
    cli_env, db, capsys
):
    # given a job parked for lack of credits, a worker, and no beat (no resume sweep)
    tree = funded_member(db, account_credits=20, workspace_credits=10, member_credits=4)
    cli_env.start_worker("w1")
    code, _out, _err = run(
        capsys, "send", "--member", str(tree.member_id), "handwritten_note", "--message", "Hi",
        "--job-id", "park-2", "--to", TO, "--from", "Sam; 9 Elm St; Austin; TX; 73301; US",
        "--wait", "30", "--json",
    )  # fmt: skip
    assert code == 14
    # when the admin gives the member the missing credit
    code, _out, err = run(capsys, "allocate", "--member", str(tree.member_id), "1", "--json")
    assert code == 0, err

    # then the job completes within seconds, long before a sweep would have run
    def completed() -> bool:
        _c, job, _e = run(capsys, "job", "park-2", "--json")
        return job["status"] == "completed"

    wait_until(completed, 10, "the parked job to resume")


def test_send_rejects_an_invalid_job_before_publishing(cli_env, db, capsys):
    code, out, err = run(
        capsys, "send", "--member", "1", "postcard", "--message", "Hi",
        "--to", "Jane; 1 Main St; Springfield; IL; 62701; Atlantis", "--json",
    )  # fmt: skip
    assert code == 2 and out is None
    assert "--to.country: unknown country 'Atlantis'" in err


def test_send_with_a_malformed_address_names_the_option(cli_env, capsys):
    code, out, err = run(capsys, "send", "--member", "1", "postcard", "--to", "Jane; Main St")
    assert code == 2 and out is None
    assert "--to takes 6 parts" in err


def test_job_for_an_unknown_id_is_a_clear_error(cli_env, db, capsys):
    code, out, err = run(capsys, "job", "nope", "--json")
    assert code == 3 and out is None
    assert "job 'nope' does not exist" in err


def test_send_wait_on_a_job_id_another_member_used_reports_only_our_own_job(cli_env, db, capsys):
    # given member B's job "shared-1" already done
    a = funded_member(db, account_credits=20, member_credits=10, name="Ava").member_id
    b = funded_member(db, account_credits=20, member_credits=10, name="Ben").member_id
    cli_env.start_worker("w1")
    send = ("send", "postcard", "--job-id", "shared-1", "--message", "Hi", "--to", TO,
            "--wait", "30", "--json")  # fmt: skip
    code, theirs, err = run(capsys, *send, "--member", str(b))
    assert code == 0, err
    # when member A sends a job with the same id and waits
    code, ours, err = run(capsys, *send, "--member", str(a))
    # then A hears about A's own job, sent and charged to A
    assert code == 0, err
    assert (ours["member_id"], ours["status"], ours["available"]) == (a, "completed", 9)
    assert ours.get("replayed") is None  # a job of its own, not B's replayed
    assert (theirs["member_id"], theirs["available"]) == (b, 9)
    # and looking the job up needs the member, since both have one
    code, _, err = run(capsys, "job", "shared-1", "--json")
    assert code == 2 and "name the member" in err
    code, job, err = run(capsys, "job", "shared-1", "--member", str(a), "--json")
    assert (code, job["member_id"], job["status"]) == (0, a, "completed")


def test_dead_letters_lists_an_unsigned_job_with_its_reason(cli_env, db, capsys):
    tree = funded_member(db, account_credits=20, member_credits=10)
    cli_env.start_worker("w1")
    unsigned = {"job": postcard("no-sig", tree.member_id)}
    cli_env.broker_app().send_task(SEND_ACTION_TASK, kwargs=unsigned, queue=FLOW_QUEUE)

    def listed() -> list[dict]:
        code, out, err = run(capsys, "dead-letters", "--json")
        assert code == 0, err
        return out["dead_letters"]

    (letter,) = wait_until(listed, 60, "the dead letter")
    assert (letter["job_id"], letter["member_id"]) == ("no-sig", tree.member_id)
    assert letter["reason"].startswith("unsigned job")
    assert letter["queue"] == FLOW_QUEUE
