"""Pricing: countries, gift card denominations, and the catalog as versioned data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.config import load_settings
from shared.errors import InvalidRequest, UnknownCountry
from shared.pricing import (
    ACTIONS,
    BUILTIN_CATALOG,
    FREE_ACTIONS,
    catalog_from_settings,
    load_catalog,
    normalize_country,
    parse_denomination,
    quote,
)

BUILTIN_VERSION = "2026-11-01"

CUSTOM = {
    "version": "custom-7",
    "handwritten_note": 6,
    "postcard_domestic_country": "GB",
    "postcard_domestic": 2,
    "postcard_international": 4,
    "gift_card_fee": 3,
    "gift_card_denominations": [10, 20],
    "accept_lead": 2,
}


def write_catalog(tmp_path: Path, data: object, name: str = "catalog.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


# ---------------------------------------------------------------- countries


@pytest.mark.parametrize(
    ("typed", "iso"),
    [
        ("US", "US"),
        ("us", "US"),
        ("USA", "US"),
        ("usa", "US"),
        ("U.S.A.", "US"),
        ("United States", "US"),
        ("united states of america", "US"),
        ("  united \t  states  ", "US"),
        ("GB", "GB"),
        ("gb", "GB"),
        ("GBR", "GB"),
        ("United Kingdom", "GB"),
        ("uk", "GB"),
        ("Great Britain", "GB"),
        ("England", "GB"),
        ("DE", "DE"),
        ("Germany", "DE"),
        ("DEU", "DE"),
        ("France", "FR"),
        ("Czechia", "CZ"),
        ("Czech Republic", "CZ"),
        ("South Korea", "KR"),
        ("Korea, Republic of", "KR"),
        ("Côte d'Ivoire", "CI"),
        ("Ivory Coast", "CI"),
        ("Holland", "NL"),
        ("Netherlands", "NL"),
    ],
)
def test_a_country_is_an_iso_code_or_a_common_name(typed, iso):
    assert normalize_country(typed) == iso


@pytest.mark.parametrize(
    "typed",
    # pycountry knows English names, not endonyms: "Deutschland" is unknown, not Germany.
    ["Narnia", "Deutschland", "XX", "ZZZ", "", "   ", "a" * 65, "United Stats"],
)
def test_an_unknown_country_is_refused_by_name(typed):
    with pytest.raises(UnknownCountry) as raised:
        normalize_country(typed)
    assert raised.value.country == typed
    assert repr(typed) in str(raised.value)
    assert "ISO 3166-1 alpha-2" in str(raised.value)


def test_an_unknown_country_is_a_bad_request_with_the_cli_exit_code_2():
    with pytest.raises(InvalidRequest) as raised:
        normalize_country("Atlantis")
    assert raised.value.exit_code == 2
    assert raised.value.as_dict()["error"] == "UnknownCountry"


@pytest.mark.parametrize("value", [42, None, ["US"]])
def test_a_country_that_is_not_text_is_refused(value):
    with pytest.raises(InvalidRequest, match="country must be text"):
        normalize_country(value)


# ---------------------------------------------------------------- the price list


@pytest.mark.parametrize(
    ("action", "options", "credits"),
    [
        ("handwritten_note", {}, 5),
        ("postcard", {"country": "US"}, 1),
        ("postcard", {"country": "United States"}, 1),
        ("postcard", {"country": "United Kingdom"}, 2),
        ("postcard", {"country": "Canada"}, 2),
        ("gift_card", {"denomination": 25}, 33),
        ("gift_card", {"denomination": "25"}, 33),
        ("gift_card", {"denomination": 500}, 508),
        ("accept_lead", {}, 1),
        ("email", {}, 0),
        ("task", {}, 0),
        ("linkedin", {}, 0),
    ],
)
def test_each_action_costs_what_the_price_list_says(action, options, credits):
    quoted = quote(action, **options)
    assert quoted.credits == credits
    assert quoted.catalog_version == BUILTIN_VERSION


def test_every_action_has_a_price():
    priced = {
        action: quote(
            action,
            country="US" if action == "postcard" else None,
            denomination=5 if action == "gift_card" else None,
        ).credits
        for action in ACTIONS
    }
    assert set(priced) == set(ACTIONS)
    assert all(priced[action] == 0 for action in FREE_ACTIONS)


def test_a_quote_keeps_the_normalised_country_and_the_denomination():
    assert quote("postcard", country="uk").as_dict() == {
        "action": "postcard",
        "credits": 2,
        "catalog_version": BUILTIN_VERSION,
        "country": "GB",
        "denomination": None,
    }
    assert quote("gift_card", denomination=" 25 ").denomination == 25


def test_a_postcard_needs_a_country():
    with pytest.raises(InvalidRequest, match="country is required to price a postcard"):
        quote("postcard")


def test_a_postcard_to_an_unknown_country_names_it():
    with pytest.raises(UnknownCountry, match="'Narnia'"):
        quote("postcard", country="Narnia")


def test_a_country_on_another_action_is_still_checked():
    assert quote("handwritten_note", country="usa").country == "US"
    with pytest.raises(UnknownCountry, match="'Mordor'"):
        quote("handwritten_note", country="Mordor")


def test_an_unknown_action_lists_the_known_ones():
    with pytest.raises(InvalidRequest, match="unknown action 'fax'; expected one of") as raised:
        quote("fax")
    assert all(action in str(raised.value) for action in ACTIONS)


# ---------------------------------------------------------------- gift card denominations


@pytest.mark.parametrize(("given", "dollars"), [(25, 25), ("25", 25), (" 40 ", 40), (7, 7)])
def test_a_denomination_is_a_whole_number_of_dollars(given, dollars):
    assert parse_denomination(given) == dollars


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (0, "must be positive, got 0"),
        ("0", "must be positive, got 0"),
        (-5, "must be positive, got -5"),
        ("-5", "must be positive, got -5"),
        (10.5, "got 10.5"),
        ("10.5", "got '10.5'"),
        (25.0, "got 25.0"),
        ("25.00", "got '25.00'"),
        (True, "got True"),
        ("", "got ''"),
        ("twenty", "got 'twenty'"),
        ("²", "got '²'"),
        ([25], r"got \[25\]"),
    ],
)
def test_a_denomination_that_is_not_whole_positive_dollars_is_refused(given, message):
    with pytest.raises(InvalidRequest, match=message):
        parse_denomination(given)


@pytest.mark.parametrize("given", [0, -5, 10.5, "10.5"])
def test_a_gift_card_quote_refuses_a_bad_denomination(given):
    with pytest.raises(InvalidRequest, match="denomination must be"):
        quote("gift_card", denomination=given)


def test_a_denomination_outside_the_catalog_is_refused_with_the_allowed_ones():
    with pytest.raises(InvalidRequest, match="denomination 7 is not offered; allowed: 5, 10, 15"):
        quote("gift_card", denomination=7)


def test_a_gift_card_needs_a_denomination():
    with pytest.raises(InvalidRequest, match="denomination is required to price a gift card"):
        quote("gift_card")


def test_a_denomination_on_another_action_is_refused():
    with pytest.raises(InvalidRequest, match="denomination applies only to gift cards"):
        quote("postcard", country="US", denomination=25)


# ---------------------------------------------------------------- catalogs as data


def test_the_builtin_catalog_loads_by_default():
    catalog = load_catalog()
    assert catalog == load_catalog(BUILTIN_CATALOG)
    assert catalog.version == BUILTIN_VERSION
    assert (catalog.handwritten_note, catalog.postcard_domestic, catalog.gift_card_fee) == (5, 1, 8)


def test_a_custom_catalog_file_sets_every_price_and_the_version(tmp_path: Path):
    catalog = load_catalog(write_catalog(tmp_path, CUSTOM))
    assert catalog.version == "custom-7"
    assert quote("handwritten_note", catalog=catalog).credits == 6
    # its domestic country is GB: the US is now international
    assert quote("postcard", country="United Kingdom", catalog=catalog).credits == 2
    assert quote("postcard", country="US", catalog=catalog).credits == 4
    assert quote("gift_card", denomination=20, catalog=catalog).credits == 23
    assert quote("accept_lead", catalog=catalog).credits == 2
    assert quote("email", catalog=catalog).catalog_version == "custom-7"
    with pytest.raises(InvalidRequest, match="allowed: 10, 20"):
        quote("gift_card", denomination=25, catalog=catalog)


def test_the_catalog_path_setting_picks_the_catalog(tmp_path: Path):
    path = write_catalog(tmp_path, CUSTOM)
    settings = load_settings(catalog_path=str(path), accept_lead_credits=4)
    catalog = catalog_from_settings(settings)
    assert (catalog.handwritten_note, catalog.accept_lead) == (6, 4)
    assert catalog.version == "custom-7+lead4"


def _without(field: str) -> dict:
    return {k: v for k, v in CUSTOM.items() if k != field}


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (_without("handwritten_note"), "handwritten_note"),
        (_without("version"), "version"),
        (CUSTOM | {"version": ""}, "version"),
        (CUSTOM | {"handwritten_note": -1}, "handwritten_note"),
        (CUSTOM | {"postcard_international": 1.5}, "postcard_international"),
        (CUSTOM | {"gift_card_fee": "free"}, "gift_card_fee"),
        (CUSTOM | {"gift_card_denominations": []}, "gift_card_denominations"),
        (CUSTOM | {"gift_card_denominations": [10, 0]}, "gift card denominations must be"),
        (CUSTOM | {"gift_card_denominations": [-5]}, "gift card denominations must be"),
        (CUSTOM | {"gift_card_denominations": [10.5]}, "gift_card_denominations"),
        (CUSTOM | {"free_actions": ["email", "fax"]}, "unknown free actions ['fax']"),
        (CUSTOM | {"surprise": 1}, "surprise"),
        (["not", "an", "object"], "invalid"),
    ],
)
def test_an_invalid_catalog_is_refused_naming_the_problem(tmp_path: Path, data, problem):
    path = write_catalog(tmp_path, data)
    with pytest.raises(InvalidRequest) as raised:
        load_catalog(path)
    assert str(path) in str(raised.value)
    assert problem in str(raised.value)


def test_a_catalog_that_is_not_json_is_refused(tmp_path: Path):
    path = tmp_path / "catalog.json"
    path.write_text('{"version": "x",')
    with pytest.raises(InvalidRequest, match="is not JSON"):
        load_catalog(path)


def test_a_catalog_that_is_not_text_is_refused(tmp_path: Path):
    path = tmp_path / "catalog.json"
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(InvalidRequest, match="is not UTF-8 text"):
        load_catalog(path)


@pytest.mark.parametrize("name", ["missing.json", "."])
def test_a_catalog_path_that_cannot_be_read_is_refused(tmp_path: Path, name):
    path = tmp_path / name
    with pytest.raises(InvalidRequest, match="cannot read catalog"):
        load_catalog(path)


# ---------------------------------------------------------------- accept_lead override


def test_an_accept_lead_override_changes_the_price_and_the_version():
    catalog = load_catalog(accept_lead=3)
    assert catalog.accept_lead == 3
    assert catalog.version == f"{BUILTIN_VERSION}+lead3"
    assert quote("accept_lead", catalog=catalog).credits == 3
    assert quote("accept_lead", catalog=catalog).catalog_version == f"{BUILTIN_VERSION}+lead3"


def test_an_accept_lead_override_to_zero_is_a_new_version_too():
    catalog = load_catalog(accept_lead=0)
    assert (catalog.accept_lead, catalog.version) == (0, f"{BUILTIN_VERSION}+lead0")


@pytest.mark.parametrize("same", [None, 1])
def test_no_override_or_the_same_price_keeps_the_version(same):
    assert load_catalog(accept_lead=same) == load_catalog()


def test_an_override_leaves_the_other_prices_alone():
    base, overridden = load_catalog(), load_catalog(accept_lead=9)
    assert overridden.model_dump(exclude={"accept_lead", "version"}) == base.model_dump(
        exclude={"accept_lead", "version"}
    )
