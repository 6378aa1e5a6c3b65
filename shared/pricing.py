"""The price list as versioned data, and the one function that turns an action into credits.

A job stores the price and the catalog version it was quoted under when it is received,
so a later catalog never reprices a job in flight.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Self

import pycountry
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.errors import CreditsError, InvalidRequest, UnknownCountry

BUILTIN_CATALOG = Path(__file__).with_name("catalog.json")

PAID_ACTIONS = ("handwritten_note", "postcard", "gift_card", "accept_lead")
FREE_ACTIONS = ("email", "task", "linkedin")
ACTIONS = PAID_ACTIONS + FREE_ACTIONS

# Names people type that ISO 3166 does not list. Everything else goes through pycountry,
# which matches alpha-2, alpha-3, official and common names case-insensitively.
COUNTRY_ALIASES = {
    "usa": "US",
    "u.s.": "US",
    "u.s.a.": "US",
    "america": "US",
    "united states of america": "US",
    "uk": "GB",
    "u.k.": "GB",
    "great britain": "GB",
    "britain": "GB",
    "england": "GB",
    "scotland": "GB",
    "wales": "GB",
    "northern ireland": "GB",
    "south korea": "KR",
    "north korea": "KP",
    "russia": "RU",
    "vietnam": "VN",
    "iran": "IR",
    "syria": "SY",
    "laos": "LA",
    "bolivia": "BO",
    "venezuela": "VE",
    "tanzania": "TZ",
    "moldova": "MD",
    "czech republic": "CZ",
    "holland": "NL",
    "the netherlands": "NL",
    "ivory coast": "CI",
    "turkey": "TR",
}
MAX_COUNTRY_LEN = 64


def normalize_country(country: str) -> str:
    """Return the ISO 3166-1 alpha-2 code for a code or a common name, or raise UnknownCountry."""
    if not isinstance(country, str):
        raise InvalidRequest(f"country must be text, got {type(country).__name__}")
    text = " ".join(country.split())
    if not text or len(text) > MAX_COUNTRY_LEN:
        raise UnknownCountry(country)
    alias = COUNTRY_ALIASES.get(text.lower())
    if alias:
        return alias
    try:
        found = pycountry.countries.lookup(text)
    except LookupError:
        raise UnknownCountry(country) from None
    return found.alpha_2


class Catalog(BaseModel):
    """One version of the price list. Every price is a whole number of credits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str = Field(min_length=1, max_length=64)
    currency: str = "credits"
    handwritten_note: int = Field(ge=0, le=10_000)
    postcard_domestic_country: str = "US"
    postcard_domestic: int = Field(ge=0, le=10_000)
    postcard_international: int = Field(ge=0, le=10_000)
    gift_card_fee: int = Field(ge=0, le=10_000)
    gift_card_denominations: tuple[int, ...] = Field(min_length=1, max_length=100)
    free_actions: tuple[str, ...] = FREE_ACTIONS
    accept_lead: int = Field(default=1, ge=0, le=10_000)

    @field_validator("postcard_domestic_country", mode="before")
    @classmethod
    def _domestic(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        try:
            return normalize_country(value)
        except CreditsError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if any(d <= 0 or d > 10_000 for d in self.gift_card_denominations):
            raise ValueError("gift card denominations must be whole dollars from 1 to 10000")
        unknown = set(self.free_actions) - set(FREE_ACTIONS)
        if unknown:
            raise ValueError(f"unknown free actions {sorted(unknown)}")
        return self

    def with_accept_lead(self, credits: int | None) -> Catalog:
        if credits is None or credits == self.accept_lead:
            return self
        # Re-validated, not model_copy'd: an override obeys the same bounds as the file.
        data = self.model_dump() | {
            "accept_lead": credits,
            "version": f"{self.version}+lead{credits}",
        }
        return Catalog.model_validate(data)


@dataclass(frozen=True)
class Quote:
    action: str
    credits: int
    catalog_version: str
    country: str | None = None
    denomination: int | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def load_catalog(path: str | Path | None = None, accept_lead: int | None = None) -> Catalog:
    source = Path(path) if path else BUILTIN_CATALOG
    try:
        text = source.read_text()
        json.loads(text)  # for a plain "not JSON" message, before pydantic's own
        # Strict: a price of true or "5" is a mistake in the file, not a 1 or a 5.
        catalog = Catalog.model_validate_json(text, strict=True).with_accept_lead(accept_lead)
    except OSError as exc:
        raise InvalidRequest(f"cannot read catalog {str(source)!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidRequest(f"catalog {str(source)!r} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"catalog {str(source)!r} is not JSON: {exc}") from None
    except ValidationError as exc:
        raise InvalidRequest(f"catalog {str(source)!r} is invalid: {exc}") from None
    return catalog


@lru_cache(maxsize=8)
def _cached_catalog(path: str | None, accept_lead: int | None) -> Catalog:
    return load_catalog(path, accept_lead)


def catalog_from_settings(settings: object) -> Catalog:
    return _cached_catalog(
        getattr(settings, "catalog_path", None), getattr(settings, "accept_lead_credits", None)
    )


def parse_denomination(value: object) -> int:
    """Whole US dollars only: '25' and 25 are fine; 25.5, '25.00', 0, -5 and True are not."""
    if isinstance(value, bool):
        raise InvalidRequest(f"denomination must be a whole number of US dollars, got {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value.strip()):
        number = int(value.strip())
    else:
        raise InvalidRequest(f"denomination must be a whole number of US dollars, got {value!r}")
    if number <= 0:
        raise InvalidRequest(f"denomination must be positive, got {number}")
    return number


def quote(
    action: str,
    *,
    country: str | None = None,
    denomination: object = None,
    catalog: Catalog | None = None,
) -> Quote:
    """Price one action. Raises InvalidRequest naming the field that is missing or wrong."""
    catalog = catalog or load_catalog()
    if action not in ACTIONS:
        raise InvalidRequest(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
    if denomination is not None and action != "gift_card":
        raise InvalidRequest(f"denomination applies only to gift cards, not to {action}")
    iso = normalize_country(country) if country is not None else None
    if action == "postcard":
        if iso is None:
            raise InvalidRequest("country is required to price a postcard")
        domestic = iso == catalog.postcard_domestic_country
        cost = catalog.postcard_domestic if domestic else catalog.postcard_international
        return Quote(action, cost, catalog.version, country=iso)
    if action == "gift_card":
        if denomination is None:
            raise InvalidRequest("denomination is required to price a gift card")
        amount = parse_denomination(denomination)
        if amount not in catalog.gift_card_denominations:
            allowed = ", ".join(str(d) for d in catalog.gift_card_denominations)
            raise InvalidRequest(f"denomination {amount} is not offered; allowed: {allowed}")
        return Quote(action, amount + catalog.gift_card_fee, catalog.version, iso, amount)
    if action == "handwritten_note":
        return Quote(action, catalog.handwritten_note, catalog.version, country=iso)
    if action == "accept_lead":
        return Quote(action, catalog.accept_lead, catalog.version, country=iso)
    return Quote(action, 0, catalog.version, country=iso)
