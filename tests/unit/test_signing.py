"""Signed jobs: only a producer holding a signing key can make a worker spend credits.
Keys rotate by id (CREDITS_JOB_VERIFY_KEYS), and nothing starts without a key."""

from __future__ import annotations

import pytest
from celery import signals

from shared.client import CreditsClient
from shared.config import load_settings
from shared.errors import ConfigurationError, JobNotAuthentic
from shared.signing import canonical, sign, verify
from tests.factories import SIGNING_KEY, SIGNING_KEY_PAIR, note
from worker.factory import create_app

pytestmark = pytest.mark.usefixtures("clean_environment")

NEW = ("2026-q1", "n" * 40)
OLD = ("2025-q4", "o" * 40)


class WorkerStub:
    """What Celery passes as the sender of ``worker_init``: something with its app."""

    def __init__(self, app) -> None:
        self.app = app


def keys(*pairs: tuple[str, str]) -> dict[str, str]:
    return dict(pairs)


# ---------------------------------------------------------------- sign and verify


def test_a_signed_job_verifies_and_names_its_key():
    job = note("j-1", 7)
    assert verify(job, sign(job, NEW), keys(NEW)) == "2026-q1"


def test_the_signature_does_not_depend_on_key_order():
    job = note("j-1", 7)
    reordered = dict(reversed(list(job.items())))
    assert canonical(job) == canonical(reordered)
    assert verify(reordered, sign(job, NEW), keys(NEW)) == "2026-q1"


@pytest.mark.parametrize(
    "change",
    [
        {"member_id": 8},
        {"message": "Send me your card details"},
        {"recipient": {"name": "Mallory", "line1": "1 Evil St", "city": "X", "country": "US"}},
    ],
    ids=["member", "text", "address"],
)
def test_any_change_to_a_signed_job_is_caught(change):
    job = note("j-1", 7)
    auth = sign(job, NEW)
    with pytest.raises(JobNotAuthentic, match="bad signature for key id '2026-q1'"):
        verify({**job, **change}, auth, keys(NEW))


def test_a_signature_made_with_another_secret_under_the_same_id_is_refused():
    job = note("j-1", 7)
    forged = sign(job, (NEW[0], "f" * 40))
    with pytest.raises(JobNotAuthentic, match="forged or altered"):
        verify(job, forged, keys(NEW))


def test_the_key_id_is_part_of_what_is_signed():
    job = note("j-1", 7)
    both = keys(NEW, (OLD[0], NEW[1]))  # two ids that share a secret
    auth = sign(job, NEW) | {"key_id": OLD[0]}
    with pytest.raises(JobNotAuthentic, match="bad signature"):
        verify(job, auth, both)


@pytest.mark.parametrize(
    ("auth", "reason"),
    [
        (None, "unsigned job: no signature was sent with it"),
        ("yes", "malformed signature"),
        ({"key_id": "2026-q1"}, "malformed signature"),
        ({"key_id": 1, "sig": "00"}, "malformed signature"),
        ({"key_id": "2026-q1", "sig": "00", "alg": "md5"}, "unsupported signature algorithm 'md5'"),
        ({"key_id": "nobody", "sig": "00"}, "signed with unknown key id 'nobody'"),
    ],
)
def test_a_missing_or_malformed_signature_says_what_is_wrong(auth, reason):
    with pytest.raises(JobNotAuthentic, match=reason):
        verify(note("j-1", 7), auth, keys(NEW))


def test_a_job_that_is_not_json_cannot_carry_a_signature():
    with pytest.raises(JobNotAuthentic, match="not JSON"):
        verify({"job_id": {1, 2}}, {"key_id": NEW[0], "sig": "00"}, keys(NEW))


# ---------------------------------------------------------------- rotation through settings


def test_a_worker_accepts_its_own_key_and_every_verify_key():
    settings = load_settings(
        job_signing_key=f"{NEW[0]}:{NEW[1]}",
        job_verify_keys=f"{OLD[0]}:{OLD[1]}, 2025-q3:" + "q" * 40,
    )
    assert settings.verify_keys() == keys(NEW, OLD, ("2025-q3", "q" * 40))
    job = note("j-1", 7)
    for key in (NEW, OLD):
        assert verify(job, sign(job, key), settings.verify_keys()) == key[0]


def test_a_retired_key_no_longer_listed_is_refused():
    settings = load_settings(job_signing_key=f"{NEW[0]}:{NEW[1]}")
    job = note("j-1", 7)
    with pytest.raises(JobNotAuthentic, match="unknown key id '2025-q4'"):
        verify(job, sign(job, OLD), settings.verify_keys())


def test_the_test_signing_key_is_what_the_factories_sign_with():
    settings = load_settings(job_signing_key=SIGNING_KEY)
    assert settings.signing_key() == SIGNING_KEY_PAIR


# ---------------------------------------------------------------- nothing starts without a key


def test_a_producer_refuses_to_start_without_a_signing_key_and_names_the_variable():
    with pytest.raises(ConfigurationError, match="CREDITS_JOB_SIGNING_KEY is not set"):
        CreditsClient(settings=load_settings(broker_url="memory://"))


def test_a_producer_with_a_signing_key_starts_and_signs_with_it():
    client = CreditsClient(settings=load_settings(broker_url="memory://",
                                                  job_signing_key=SIGNING_KEY))  # fmt: skip
    try:
        assert client.key == SIGNING_KEY_PAIR
    finally:
        client.close()


def test_a_worker_refuses_to_start_without_a_signing_key_and_names_the_variable():
    app = create_app(load_settings(broker_url="memory://"))
    with pytest.raises(SystemExit, match="CREDITS_JOB_SIGNING_KEY is not set"):
        signals.worker_init.send(sender=WorkerStub(app))
    signed = create_app(load_settings(broker_url="memory://", job_signing_key=SIGNING_KEY))
    signals.worker_init.send(sender=WorkerStub(signed))  # starts: no SystemExit
