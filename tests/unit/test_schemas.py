"""Send-action jobs: every action validates, every field is bounded, errors name the field."""

from __future__ import annotations

import json

import pytest

from shared.errors import InvalidRequest
from shared.pricing import ACTIONS
from shared.schemas import MAX_JOB_BYTES, content_hash, job_dict, parse_job
from tests.factories import ADDRESS


def job(action: str, **overrides: object) -> dict:
    """A valid job for ``action``, with ``overrides`` applied on top."""
    base: dict[str, object] = {"job_id": f"flow-1:step-1:{action}", "member_id": 7}
    fields: dict[str, dict[str, object]] = {
        "handwritten_note": {
            "message": "Thanks for the call!",
            "recipient": dict(ADDRESS),
            "return_address": dict(ADDRESS),
        },
        "postcard": {"message": "Hello from Springfield", "recipient": dict(ADDRESS)},
        "gift_card": {
            "brand": "Amazon",
            "denomination": 25,
            "recipient": dict(ADDRESS),
            "return_address": dict(ADDRESS),
        },
        "email": {"to": "lead@example.com", "subject": "Hi", "body": "Hello there"},
        "task": {"title": "Call the lead back"},
        "linkedin": {"profile_url": "https://linkedin.com/in/jane"},
        "accept_lead": {"lead_id": "lead-42"},
    }
    return {**base, "action": action, **fields[action], **overrides}


def error_of(data: object) -> str:
    with pytest.raises(InvalidRequest) as caught:
        parse_job(data)
    return str(caught.value)


# ---------------------------------------------------------------- every action validates


@pytest.mark.parametrize("action", ACTIONS)
def test_every_action_has_a_valid_job_that_parses(action):
    spec = parse_job(job(action))
    assert spec.action == action
    assert spec.job_id == f"flow-1:step-1:{action}"
    assert spec.member_id == 7
    assert spec.source == "flow"


def test_country_names_are_normalised_to_iso_codes():
    spec = parse_job(job("postcard", recipient={**ADDRESS, "country": "united kingdom"}))
    assert spec.recipient.country == "GB"


def test_a_parsed_job_round_trips_through_job_dict():
    spec = parse_job(job("gift_card", flow_id="f-1", step_id="s-1", source="instant"))
    assert parse_job(job_dict(spec)) == spec


# ---------------------------------------------------------------- every field is bounded


@pytest.mark.parametrize(
    ("action", "field", "limit"),
    [
        ("handwritten_note", "message", 1000),
        ("postcard", "message", 500),
        ("gift_card", "message", 500),
        ("gift_card", "brand", 64),
        ("email", "subject", 200),
        ("email", "body", 20_000),
        ("task", "title", 200),
        ("task", "notes", 2000),
        ("linkedin", "profile_url", 300),
        ("linkedin", "message", 300),
        ("accept_lead", "lead_id", 128),
        ("email", "flow_id", 128),
        ("email", "step_id", 128),
    ],
)
def test_text_fields_accept_their_limit_and_refuse_one_more_character(action, field, limit):
    assert parse_job(job(action, **{field: "x" * limit}))
    message = error_of(job(action, **{field: "x" * (limit + 1)}))
    assert f"{field}: " in message
    assert str(limit) in message


@pytest.mark.parametrize(
    ("field", "limit"),
    [
        ("name", 100),
        ("company", 100),
        ("line1", 100),
        ("line2", 100),
        ("city", 64),
        ("region", 64),
        ("postal_code", 16),
    ],
)
def test_address_lines_are_bounded_and_the_error_names_the_nested_path(field, limit):
    assert parse_job(job("postcard", recipient={**ADDRESS, field: "x" * limit}))
    message = error_of(
        job("handwritten_note", return_address={**ADDRESS, field: "x" * (limit + 1)})
    )
    assert f"return_address.{field}: " in message


def test_a_country_longer_than_64_characters_is_refused():
    message = error_of(job("postcard", recipient={**ADDRESS, "country": "U" * 65}))
    assert message.startswith("invalid job: recipient.country: ")


def test_an_unknown_country_names_recipient_country_and_the_value():
    message = error_of(job("postcard", recipient={**ADDRESS, "country": "Narnia"}))
    assert "recipient.country: unknown country 'Narnia'" in message


def test_a_missing_address_line_names_its_path():
    recipient = {k: v for k, v in ADDRESS.items() if k != "line1"}
    assert "recipient.line1: Field required" in error_of(job("postcard", recipient=recipient))


@pytest.mark.parametrize("denomination", [0, -5, 25.5, 25.0, "25", True, None, 10_001])
def test_gift_denomination_must_be_a_positive_whole_number(denomination):
    message = error_of(job("gift_card", denomination=denomination))
    assert "denomination: " in message


@pytest.mark.parametrize("member_id", ["7", 7.0, 0, -1, True, 2**62 + 1, None])
def test_member_id_must_be_a_positive_integer_not_a_string(member_id):
    assert "member_id: " in error_of(job("email", member_id=member_id))


@pytest.mark.parametrize("job_id", ["", "has space", "x" * 129, "semi;colon", 42])
def test_job_id_must_be_a_short_safe_token(job_id):
    assert "job_id: " in error_of(job("email", job_id=job_id))


@pytest.mark.parametrize("action", ACTIONS)
def test_extra_fields_are_forbidden_on_every_action(action):
    message = error_of(job(action, price=0))
    assert "price: Extra inputs are not permitted" in message


def test_extra_fields_are_forbidden_inside_an_address_too():
    message = error_of(job("postcard", recipient={**ADDRESS, "lat": 1.0}))
    assert "recipient.lat: Extra inputs are not permitted" in message


def test_a_field_of_another_action_is_an_extra_field():
    assert "denomination: Extra inputs" in error_of(job("postcard", denomination=25))


def test_source_is_flow_or_instant_only():
    assert parse_job(job("task", source="instant")).source == "instant"
    assert "source: " in error_of(job("task", source="batch"))


def test_email_address_needs_an_at_sign():
    assert "to: " in error_of(job("email", to="not-an-address"))


# ---------------------------------------------------------------- error messages


def test_an_unknown_action_is_named_with_the_expected_ones():
    message = error_of({**job("email"), "action": "fax"})
    assert "action: unknown action 'fax'" in message
    assert "handwritten_note" in message


def test_a_missing_action_is_named():
    data = job("email")
    del data["action"]
    assert "action: missing" in error_of(data)


def test_every_bad_field_is_named_in_one_message():
    message = error_of(job("gift_card", denomination=0, member_id="7", brand=""))
    assert "denomination: " in message
    assert "member_id: " in message
    assert "brand: " in message


def test_the_action_tag_is_not_part_of_the_field_path():
    message = error_of(job("gift_card", denomination="a lot"))
    assert "gift_card.denomination" not in message
    assert "denomination: " in message


# ---------------------------------------------------------------- what is not a job at all


@pytest.mark.parametrize("text", ["not json", "{", b"\xff\xfe", ""])
def test_text_that_is_not_json_is_refused(text):
    assert f"job must be a JSON object, got {type(text).__name__}" in error_of(text)


def test_even_json_text_is_refused_because_a_job_arrives_decoded():
    assert "job must be a JSON object, got str" in error_of(json.dumps(job("email")))


@pytest.mark.parametrize("data", [[1, 2], 42, None, 4.5, True])
def test_a_job_must_be_a_json_object(data):
    assert "job must be a JSON object" in error_of(data)


def test_a_job_model_is_accepted_as_well_as_a_dict():
    spec = parse_job(job("task"))
    assert parse_job(spec) == spec


def test_a_job_dict_over_the_byte_limit_is_refused():
    data = job("email", body="x" * 20_000, unknown="y" * MAX_JOB_BYTES)
    assert f"job is larger than {MAX_JOB_BYTES} bytes" in error_of(data)


# ---------------------------------------------------------------- content hash


def test_content_hash_does_not_depend_on_key_order():
    data = job("handwritten_note")
    reordered = dict(reversed(list(data.items())))
    reordered["recipient"] = dict(reversed(list(ADDRESS.items())))
    assert list(reordered) != list(data)
    assert content_hash(parse_job(reordered)) == content_hash(parse_job(data))


def test_content_hash_ignores_whitespace_that_validation_strips():
    padded = job("postcard", message="  Hello from Springfield  ")
    assert content_hash(parse_job(padded)) == content_hash(parse_job(job("postcard")))


@pytest.mark.parametrize(
    "change",
    [
        {"message": "Something else"},
        {"member_id": 8},
        {"flow_id": "flow-2"},
        {"recipient": {**ADDRESS, "city": "Shelbyville"}},
        {"source": "instant"},
    ],
)
def test_content_hash_differs_when_the_content_differs(change):
    assert content_hash(parse_job(job("postcard", **change))) != content_hash(
        parse_job(job("postcard"))
    )


def test_content_hash_is_a_sha256_hex_digest():
    digest = content_hash(parse_job(job("email")))
    assert len(digest) == 64
    assert int(digest, 16) >= 0
