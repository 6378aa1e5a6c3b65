"""Settings: nonsense in a CREDITS_* variable fails at start-up, naming the variable."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from shared.config import load_settings, normalize_database_url
from shared.errors import InvalidRequest


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start from the defaults: no CREDITS_* setting of the developer's shell leaks in."""
    for name in list(os.environ):
        if name.startswith("CREDITS_") and not name.startswith("CREDITS_TEST_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("CREDITS_DATABASE_URL", "mysql://x", "unsupported database 'mysql'"),
        ("CREDITS_DATABASE_URL", "oracle://scott@db/orcl", "unsupported database 'oracle'"),
        ("CREDITS_DATABASE_URL", "not a url", "not a database URL"),
        ("CREDITS_DATABASE_URL", "", "not a database URL"),
        ("CREDITS_REDIS_URL", "http://x", "not a Redis URL: 'http://x'"),
        ("CREDITS_REDIS_URL", "127.0.0.1:6379", "not a Redis URL"),
        ("CREDITS_BROKER_URL", "http://x", "not a broker URL: 'http://x'"),
        ("CREDITS_HOLD_TTL_S", "-1", "greater than 0"),
        ("CREDITS_HOLD_TTL_S", "0", "greater than 0"),
        ("CREDITS_HOLD_TTL_S", "86401", "less than or equal to 86400"),
        ("CREDITS_HOLD_TTL_S", "fifteen minutes", "valid number"),
        ("CREDITS_LOCK_TIMEOUT_S", "0", "greater than 0"),
        ("CREDITS_LOCK_BLOCKING_TIMEOUT_S", "-5", "greater than 0"),
        ("CREDITS_KEY_PREFIX", "", "at least 1 character"),
        ("CREDITS_KEY_PREFIX", "x" * 65, "at most 64 characters"),
        ("CREDITS_EVENTS_STREAM_MAXLEN", "10", "greater than or equal to 1000"),
        ("CREDITS_ACCEPT_LEAD_CREDITS", "-1", "greater than or equal to 0"),
        ("CREDITS_ACCEPT_LEAD_CREDITS", "1.5", "valid integer"),
    ],
)
def test_nonsense_in_a_variable_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable, value, message
):
    monkeypatch.setenv(variable, value)
    with pytest.raises(InvalidRequest) as raised:
        load_settings()
    assert f"{variable}:" in str(raised.value)
    assert message in str(raised.value)
    assert str(raised.value).startswith("bad configuration: ")


def test_every_bad_variable_is_named_at_once(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CREDITS_DATABASE_URL", "mysql://x")
    monkeypatch.setenv("CREDITS_REDIS_URL", "http://x")
    monkeypatch.setenv("CREDITS_HOLD_TTL_S", "-1")
    with pytest.raises(InvalidRequest) as raised:
        load_settings()
    for variable in ("CREDITS_DATABASE_URL", "CREDITS_REDIS_URL", "CREDITS_HOLD_TTL_S"):
        assert variable in str(raised.value)


def test_a_bad_configuration_is_a_bad_request_for_the_cli():
    with pytest.raises(InvalidRequest) as raised:
        load_settings(redis_url="http://x")
    assert raised.value.exit_code == 2
    assert not isinstance(raised.value.__cause__, ValidationError)


def test_a_lock_wait_longer_than_ten_lock_lifetimes_is_refused(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CREDITS_LOCK_TIMEOUT_S", "0.1")
    monkeypatch.setenv("CREDITS_LOCK_BLOCKING_TIMEOUT_S", "5")
    with pytest.raises(InvalidRequest, match="CREDITS_LOCK_BLOCKING_TIMEOUT_S is more than ten"):
        load_settings()


@pytest.mark.parametrize(
    ("given", "normalised"),
    [
        ("postgresql://user@host/db", "postgresql+psycopg://user@host/db"),
        ("postgres://user@host/db", "postgresql+psycopg://user@host/db"),
        ("postgres://user:secret@host:5433/db", "postgresql+psycopg://user:secret@host:5433/db"),
        ("  postgresql://user@host/db \n", "postgresql+psycopg://user@host/db"),
        ("postgresql+psycopg://user@host/db", "postgresql+psycopg://user@host/db"),
        ("sqlite:///credits.db", "sqlite:///credits.db"),
        ("sqlite:////var/lib/credits/credits.db", "sqlite:////var/lib/credits/credits.db"),
        ("sqlite://", "sqlite://"),
    ],
)
def test_database_urls_are_accepted_as_users_write_them(
    monkeypatch: pytest.MonkeyPatch, given, normalised
):
    monkeypatch.setenv("CREDITS_DATABASE_URL", given)
    assert load_settings().database_url == normalised
    assert normalize_database_url(given) == normalised


def test_postgres_and_sqlite_are_told_apart():
    assert load_settings(database_url="sqlite:///x.db").is_sqlite
    assert not load_settings(database_url="postgres://u@h/db").is_sqlite


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://cache:6380/1", "unix:///tmp/redis.sock"]
)
def test_redis_urls_are_accepted(monkeypatch: pytest.MonkeyPatch, url):
    monkeypatch.setenv("CREDITS_REDIS_URL", url)
    assert load_settings().redis_url == url


def test_defaults_need_no_environment_at_all():
    settings = load_settings()
    assert settings.database_url == "sqlite:///credits.db"
    assert settings.hold_ttl_s == 900.0
    assert settings.accept_lead_credits is None and settings.catalog_path is None


def test_the_broker_and_the_stream_default_from_the_redis_url_and_key_prefix(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv("CREDITS_REDIS_URL", "redis://cache:6379/2")
    monkeypatch.setenv("CREDITS_KEY_PREFIX", "acme:")
    settings = load_settings()
    assert settings.broker == "redis://cache:6379/2"
    assert settings.stream == "acme:events"
    monkeypatch.setenv("CREDITS_BROKER_URL", "amqp://rabbit//")
    assert load_settings().broker == "amqp://rabbit//"


def test_explicit_overrides_beat_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CREDITS_DATABASE_URL", "sqlite:///from-env.db")
    assert load_settings().database_url == "sqlite:///from-env.db"
    assert load_settings(database_url="postgres://u@h/db").database_url == (
        "postgresql+psycopg://u@h/db"
    )


def test_an_override_is_validated_like_the_environment():
    with pytest.raises(InvalidRequest, match=r"CREDITS_DATABASE_URL: .*mysql"):
        load_settings(database_url="mysql://x")


def test_settings_cannot_change_after_start_up():
    settings = load_settings()
    with pytest.raises(ValidationError):
        settings.hold_ttl_s = 1.0  # type: ignore[misc]
