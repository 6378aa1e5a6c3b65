"""Settings: nonsense in a CREDITS_* variable fails at start-up, naming the variable."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.config import BROKER_HEARTBEAT_S, load_settings, mask_url, normalize_database_url
from shared.errors import ConfigurationError, InvalidRequest

# Start from the defaults: no CREDITS_* setting of the developer's shell leaks in.
pytestmark = pytest.mark.usefixtures("clean_environment")


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


# ---------------------------------------------------------------- closed sets


@pytest.mark.parametrize(
    ("variable", "value", "allowed"),
    [
        ("CREDITS_PROVIDER", "acme-print", "'stub'"),
        ("CREDITS_LOG_FORMAT", "xml", "'text' or 'json'"),
        ("CREDITS_FAULT_CRASH_AT", "somewhere", "'after_hold'"),
    ],
)
def test_a_closed_setting_outside_its_set_names_the_variable_and_the_choices(
    monkeypatch: pytest.MonkeyPatch, variable, value, allowed
):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert f"{variable}: Input should be" in str(raised.value)
    assert allowed in str(raised.value)


def test_fault_injection_needs_its_arming_phrase_too():
    with pytest.raises(ConfigurationError, match="CREDITS_FAULT_ARMED='yes-kill-my-workers'"):
        load_settings(fault_crash_at="after_hold")
    armed = load_settings(fault_crash_at="after_hold", fault_armed="yes-kill-my-workers")
    assert armed.fault_crash_at == "after_hold"


# ---------------------------------------------------------------- secrets stay secret


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CREDITS_REDIS_URL", "redis//:S3cret@x"),
        ("CREDITS_REDIS_URL", "redis:/:S3cret@cache:6379/0"),
        ("CREDITS_REDIS_URL", "http://user:S3cret@cache:6379/0"),
        ("CREDITS_STUB_REDIS_URL", "redis//vendor:S3cret@x/2"),
        ("CREDITS_BROKER_URL", "amqp//guest:S3cret@rabbit//"),
        ("CREDITS_BROKER_URL", "http://guest:S3cret@rabbit//"),
        ("CREDITS_DATABASE_URL", "postgresql//credits:S3cret@db/credits"),
        ("CREDITS_DATABASE_URL", "mysql://credits:S3cret@db/credits"),
    ],
)
def test_a_configuration_error_never_prints_a_url_password(
    monkeypatch: pytest.MonkeyPatch, variable, value
):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert f"{variable}:" in str(raised.value)
    assert "S3cret" not in str(raised.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:S3cret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("amqp://guest:S3cret@rabbit//", "amqp://guest:***@rabbit//"),
        ("redis//:S3cret@x", "***@x"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
        ("redis://user@cache:6379/0", "redis://user@cache:6379/0"),
    ],
)
def test_mask_url_hides_the_password_and_nothing_else(url, shown):
    assert mask_url(url) == shown


def test_a_short_signing_secret_is_refused_without_printing_it():
    with pytest.raises(ConfigurationError) as raised:
        load_settings(job_signing_key="prod-1:tooShortSecret")
    assert "CREDITS_JOB_SIGNING_KEY" in str(raised.value)
    assert "at least 32 characters" in str(raised.value)
    assert "tooShortSecret" not in str(raised.value)


def test_a_malformed_verify_key_is_named_by_its_position_not_its_secret():
    good = "old-1:" + "o" * 40
    with pytest.raises(ConfigurationError) as raised:
        load_settings(job_verify_keys=f"{good},no colon here " + "x" * 40)
    assert "CREDITS_JOB_VERIFY_KEYS entry 2" in str(raised.value)
    assert "o" * 40 not in str(raised.value) and "x" * 40 not in str(raised.value)


def test_signing_keys_are_not_shown_in_the_settings_repr():
    settings = load_settings(job_signing_key="prod-1:" + "s" * 40)
    assert "s" * 40 not in repr(settings)
    assert settings.signing_key() == ("prod-1", "s" * 40)


# ---------------------------------------------------------------- clocks


def test_the_in_doubt_age_must_exceed_the_job_lock():
    with pytest.raises(ConfigurationError, match="CREDITS_IN_DOUBT_AFTER_S must exceed"):
        load_settings(in_doubt_after_s=90, job_lock_timeout_s=90)
    assert load_settings(in_doubt_after_s=91, job_lock_timeout_s=90).in_doubt_after_s == 91


def test_the_redelivery_delay_follows_the_broker():
    redis = load_settings(visibility_timeout_s=3600, restore_interval_s=10)
    rabbit = load_settings(broker_url="amqp://rabbit//")
    assert redis.redelivery_delay_s == 3600 + 10 + 30
    assert rabbit.redelivery_delay_s == 2 * BROKER_HEARTBEAT_S + 30
