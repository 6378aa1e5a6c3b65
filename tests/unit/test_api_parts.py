"""Parts of the HTTP API that need no server: the status of each error, the problem
document, the Idempotency-Key header, allocation bodies and the session key."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from entrypoints.api.models import AllocationRequest
from entrypoints.api.money import idempotency_key
from entrypoints.api.problems import MEDIA_TYPE, catalogue, from_error, status_of
from entrypoints.api.state import session_secret
from shared import errors
from shared.config import load_settings
from tests.factories import SIGNING_KEY

pytestmark = pytest.mark.usefixtures("clean_environment")


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.NotAuthenticated("no"), 401),
        (errors.PermissionDenied("no"), 403),
        (errors.JobNotAuthentic("no"), 403),
        (errors.NotFound("member", 3), 404),
        (errors.IdempotencyConflict("again"), 409),
        (errors.InsufficientCredits("workspace 1 (Sales)", 3, 9), 409),
        (errors.HoldAlreadyResolved("j", "captured", "released"), 409),
        (errors.InvalidRequest("bad"), 422),
        (errors.UnknownCountry("Narnia"), 422),
        (errors.ServiceUnavailable("down"), 503),
        (errors.DatabaseUnavailable("down"), 503),
        (errors.BrokerUnavailable("down"), 503),
        (errors.SchemaMissing("migrate"), 503),
        (errors.TransientVendorError("later"), 502),
        (errors.InvariantViolation("drift"), 500),
    ],
)
def test_each_error_has_its_status_and_keeps_the_clis_code_and_message(
    error: errors.CreditsError, status: int
) -> None:
    assert status_of(error) == status
    response = from_error(None, error)
    body = json.loads(response.body)
    assert response.status_code == status and response.media_type == MEDIA_TYPE
    assert (body["code"], body["detail"]) == (error.as_dict()["error"], error.as_dict()["message"])
    assert body["type"] == f"/problems/{error.code}" and body["status"] == status
    assert ("WWW-Authenticate" in response.headers) == (status == 401)
    assert ("Retry-After" in response.headers) == (status == 503)


def test_not_enough_credits_says_how_many_there_are() -> None:
    body = json.loads(from_error(None, errors.InsufficientCredits("member 3", 4, 10)).body)
    assert (body["available"], body["needed"]) == (4, 10)


def test_the_problem_catalogue_lists_each_code_once_with_its_status() -> None:
    found = {p["code"]: p["status"] for p in catalogue()}
    assert found["InsufficientCredits"] == 409 and found["NotAuthenticated"] == 401
    assert found["MethodNotAllowed"] == 405 and len(found) == len(catalogue())


@pytest.mark.parametrize(
    ("raw", "key"), [("abc", "abc"), ('"abc"', "abc"), ("  k-1 ", "k-1"), ('"a"b"', 'a"b')]
)
def test_an_idempotency_key_may_come_as_a_structured_string(raw: str, key: str) -> None:
    assert idempotency_key(raw) == key


@pytest.mark.parametrize("raw", ['""', " ", "x" * 129])
def test_an_empty_or_long_idempotency_key_is_refused(raw: str) -> None:
    with pytest.raises(errors.InvalidRequest, match="Idempotency-Key must be 1 to 128"):
        idempotency_key(raw)


def test_an_allocation_names_one_target_and_one_of_amount_or_set() -> None:
    assert AllocationRequest.model_validate({"member_id": 3, "set": 0}).target == ("member", 3)
    assert AllocationRequest.model_validate({"workspace_id": 2, "amount": -4}).amount == -4
    for bad in ({"member_id": 3}, {"member_id": 3, "workspace_id": 1, "amount": 1},
                {"amount": 1}, {"member_id": 3, "amount": True}, {"member_id": "3", "set": 1},
                {"member_id": 3, "set": 1, "note": "x"}):  # fmt: skip
        with pytest.raises(ValidationError):
            AllocationRequest.model_validate(bad)


def test_the_session_key_is_derived_from_the_signing_key_but_is_not_it() -> None:
    derived = session_secret(load_settings(job_signing_key=SIGNING_KEY))
    assert derived == session_secret(load_settings(job_signing_key=SIGNING_KEY))
    assert SIGNING_KEY.split(":", 1)[1] not in derived and len(derived) == 64
    own = "o" * 40
    assert session_secret(load_settings(job_signing_key=SIGNING_KEY,
                                        api_session_secret=own)) == own  # fmt: skip
    with pytest.raises(errors.ConfigurationError, match="CREDITS_JOB_SIGNING_KEY"):
        session_secret(load_settings())
    with pytest.raises(errors.ConfigurationError, match="CREDITS_API_SESSION_SECRET"):
        load_settings(api_session_secret="short")
