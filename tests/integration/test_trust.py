"""The trust boundary, against real workers, PostgreSQL and Redis.

Only producers holding a signing key can make a worker spend credits; a job id belongs
to its member, so one member's job id can neither block nor reveal another's; jobs the
workers re-send themselves (the sweeps) are signed with the workers' own key.
"""

from __future__ import annotations

import subprocess

import pytest
from celery import Celery
from sqlalchemy import select

from shared.client import SEND_ACTION_TASK
from shared.models import Job
from shared.queues import FLOW_QUEUE
from shared.services import balances, jobs
from shared.services.dead_letters import dead_letters
from shared.services.reconcile import reconcile
from shared.services.recovery import vendor_key
from shared.signing import sign
from tests.factories import (
    ALL_DELIVERED,
    SIGNING_KEY_PAIR,
    accepted_job,
    as_env,
    funded_member,
    gift_card,
    job_counts,
    message,
    note,
    recorded_job,
)
from tests.helpers import wait_until
from tests.integration.harness import FAST_RECOVERY, CeleryProcess, worker_command

GIFT_CARD_25_COST = 33  # $25 + 8 in the built-in catalog
NOTE_COST = 5
# Someone who can reach the broker but holds no producer key: the secret is a guess.
GUESSED_KEY = (SIGNING_KEY_PAIR[0], "g" * 40)
# The workers' own key, for what they re-send; the producers' key is only verified.
WORKER_KEY = "worker-key:" + "w" * 40


def attacker_app(stack) -> Celery:
    """A plain Celery app, as anyone with the broker's address and password can make one."""
    app = Celery("attacker", broker=stack.redis_url, set_as_current=False)
    app.conf.broker_transport_options = {"global_keyprefix": stack.key_prefix}
    stack.closers.append(app.close)
    return app


def jobs_of(db, member_id: int) -> dict[str, Job]:
    with db.unit_of_work() as session:
        return {j.job_id: j for j in session.scalars(select(Job).where(Job.member_id == member_id))}


def test_jobs_without_a_producers_signature_charge_nobody_and_are_dead_letters(stack, db):
    # given a member of another account with credits, and a worker
    stack.settings_env.update(as_env(ALL_DELIVERED))
    victim = funded_member(db, account_credits=100, member_credits=100, name="Vic").member_id
    stack.start_worker("w1", concurrency=1)
    attacker = attacker_app(stack)
    other_member = gift_card("altered", victim + 1000)

    # when valid gift-card jobs for that member arrive by task name, without a real signature
    hostile = {
        "unsigned": {"job": gift_card("unsigned", victim)},
        "forged": {"job": gift_card("forged", victim),
                   "auth": sign(gift_card("forged", victim), GUESSED_KEY)},
        "unknown-key": {"job": gift_card("unknown-key", victim),
                        "auth": sign(gift_card("unknown-key", victim), ("mallory", "m" * 40))},
        # A real signature, lifted from another job and put on this one.
        "altered": {"job": gift_card("altered", victim), "auth": message(other_member)["auth"]},
    }  # fmt: skip
    for kwargs in hostile.values():
        attacker.send_task(SEND_ACTION_TASK, kwargs=kwargs, queue=FLOW_QUEUE)

    # then each is a dead letter with its reason, and nobody was charged or sent anything
    letters = wait_until(lambda: len(dead_letters(db)) == 4 and dead_letters(db), 60, "4 letters")
    reasons = {d["job_id"]: d["reason"] for d in letters}
    assert reasons["unsigned"].startswith("unsigned job")
    assert reasons["forged"].startswith("bad signature for key id 'test-key'")
    assert reasons["unknown-key"].startswith("signed with unknown key id 'mallory'")
    assert reasons["altered"].startswith("bad signature for key id 'test-key'")
    assert jobs_of(db, victim) == {}
    stub = stack.stub()
    assert [stub.sends(vendor_key(victim, job_id)) for job_id in hostile] == [0, 0, 0, 0]
    assert [e for e in stack.events() if e["job_id"] in hostile] == []  # no one is told
    wallet = balances.balance(db, "member", victim)
    assert (wallet.available, wallet.held) == (100, 0)

    # and the same job, sent by a producer with the key, is charged once
    stack.client().send_action(gift_card("forged", victim))
    wait_until(lambda: job_counts(db)["completed"] == 1, 60, "the genuine job")
    assert balances.balance(db, "member", victim).available == 100 - GIFT_CARD_25_COST
    assert jobs_of(db, victim)["forged"].key_id == SIGNING_KEY_PAIR[0]
    assert stub.sends(vendor_key(victim, "forged")) == 1
    assert reconcile(db).figures["spent"] == GIFT_CARD_25_COST


def test_two_members_with_one_job_id_each_get_their_own_job_and_outcome(stack, db):
    # given member A of one account and member B of another, and one job id for both
    stack.settings_env.update(as_env(ALL_DELIVERED))
    a = funded_member(db, account_credits=50, member_credits=20, name="Ava").member_id
    b = funded_member(db, account_credits=100, member_credits=50, name="Ben").member_id
    job_id = "flow-9:step-2:lead-7"
    client = stack.client()
    start = client.events.last_id()
    stack.start_worker("w1")

    # when A sends it first, and B's real job with the same id follows
    client.send_action(note(job_id, a))
    outcome_a = client.events.wait_for(a, job_id, start, 60)
    assert outcome_a is not None and outcome_a["status"] == "completed"
    client.send_action(gift_card(job_id, b))

    # then B's wait, reading the stream from before A's outcome, skips A's and gets B's
    outcome_b = client.events.wait_for(b, job_id, start, 60)
    assert outcome_b is not None
    assert (outcome_b["member_id"], outcome_b["status"], outcome_b["cost"]) == (
        str(b), "completed", str(GIFT_CARD_25_COST)
    )  # fmt: skip
    assert outcome_b["available"] == str(50 - GIFT_CARD_25_COST)
    assert client.events.wait_for(a, job_id, start, 5)["member_id"] == str(a)
    # and each member was charged once, for their own job, which the vendor sent once
    assert balances.balance(db, "member", a).available == 20 - NOTE_COST
    assert balances.balance(db, "member", b).available == 50 - GIFT_CARD_25_COST
    assert [jobs_of(db, m)[job_id].status for m in (a, b)] == ["completed", "completed"]
    stub = stack.stub()
    assert [stub.sends(vendor_key(m, job_id)) for m in (a, b)] == [1, 1]
    assert dead_letters(db) == []
    assert reconcile(db).figures["spent"] == NOTE_COST + GIFT_CARD_25_COST


def left_in_doubt(db, job: dict) -> None:
    """A job a worker accepted (credits held, submitted), whose vendor call timed out
    before the vendor got it; the worker is gone, and nobody will retry it."""
    accepted = accepted_job(db, job)
    assert accepted.status == "submitted"
    jobs.note_error(db, accepted.pk, "in doubt: print-house did not answer in time")


def left_received(db, job: dict) -> None:
    """A job a worker recorded a minute ago, whose message was then lost."""
    recorded_job(db, job, status="received", age_s=60)


@pytest.mark.parametrize("left", [left_in_doubt, left_received], ids=["resolver", "republish"])
def test_a_job_the_sweeps_send_again_is_signed_by_the_worker_and_accepted(stack, db, left):
    # given workers that sign with a key of their own and accept the producers' key too
    stack.settings_env.update(as_env(ALL_DELIVERED) | FAST_RECOVERY | {
        "CREDITS_JOB_SIGNING_KEY": WORKER_KEY,
        "CREDITS_JOB_VERIFY_KEYS": ":".join(SIGNING_KEY_PAIR),
    })  # fmt: skip
    member = funded_member(db, account_credits=20, member_credits=10).member_id
    # and a job whose message is gone
    left(db, note("lost-1", member))
    stub = stack.stub()
    assert stub.sends(vendor_key(member, "lost-1")) == 0

    # when the sweeps run
    stack.start_worker("w1")
    stack.start_beat()

    # then the sweep sends it again, the worker accepts it, and it is charged once
    wait_until(lambda: job_counts(db)["completed"] == 1, 90, "the lost job to be re-sent")
    job = jobs_of(db, member)["lost-1"]
    assert job.republished == 1
    assert dead_letters(db) == []
    assert stub.sends(vendor_key(member, "lost-1")) == 1
    wallet = balances.balance(db, "member", member)
    assert (wallet.available, wallet.held) == (10 - NOTE_COST, 0)
    assert reconcile(db).ok


def test_a_worker_without_a_signing_key_refuses_to_start_and_names_the_variable(stack):
    env = stack.env()
    del env["CREDITS_JOB_SIGNING_KEY"]
    worker = CeleryProcess(env, stack.tmp_path / "nokey.log", "nokey", worker_command("nokey"))
    stack.workers.append(worker.start())
    try:
        code = worker.proc.wait(60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker started without a signing key:\n{worker.log_tail()}")
    assert code != 0
    assert "CREDITS_JOB_SIGNING_KEY is not set" in worker.log_path.read_text()
