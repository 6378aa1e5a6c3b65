"""tests/compose: Compose's interpolation, .env files, YAML reading and schema, without Compose.

These pin the rules the compose-file tests rely on, so that "the file resolves" means what
it would mean to ``docker compose config``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.compose import (
    ComposeError,
    InterpolationError,
    interpolate,
    load,
    parse_dotenv,
    read_yaml,
    validate,
)
from tests.compose.loader import SCHEMA_PATH, schema

ENV = {"SET": "value", "EMPTY": "", "URL": "redis://:pw@redis:6379/0"}


# ---------------------------------------------------------------- interpolation


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("no variables at all", "no variables at all"),
        ("$SET", "value"),
        ("${SET}", "value"),
        ("a-${SET}-b-$SET.c", "a-value-b-value.c"),
        ("$$", "$"),
        ("$$SET and $${SET}", "$SET and ${SET}"),
        ("celery@$$HOSTNAME", "celery@$HOSTNAME"),
        ("${UNSET:-fallback}", "fallback"),
        ("${EMPTY:-fallback}", "fallback"),
        ("${SET:-fallback}", "value"),
        ("${UNSET-fallback}", "fallback"),
        ("${EMPTY-fallback}", ""),
        ("${SET-fallback}", "value"),
        ("${SET:?is needed}", "value"),
        ("${SET?is needed}", "value"),
        ("${EMPTY?is needed}", ""),
        ("${UNSET:-redis://h:6379/0}", "redis://h:6379/0"),
        ("${UNSET:-${SET}}", "value"),
        ("${UNSET:-${ALSO_UNSET:-deep}}", "deep"),
        ("${UNSET:-$SET}", "value"),
        ("${UNSET:-{x}}", "{x}"),
        ("${URL}", "redis://:pw@redis:6379/0"),
        ("${lower_case_name:-ok}", "ok"),
    ],
)
def test_interpolation_follows_the_compose_rules(template: str, expected: str) -> None:
    assert interpolate(template, ENV) == expected


def test_a_variable_with_no_value_and_no_default_becomes_empty_and_is_recorded() -> None:
    unset: set[str] = set()
    assert interpolate("[$UNSET][${OTHER}][${DEFAULTED:-x}]", ENV, unset) == "[][][x]"
    assert unset == {"UNSET", "OTHER"}


@pytest.mark.parametrize(
    ("template", "variable", "message"),
    [
        ("${UNSET:?set it in .env}", "UNSET", "set it in .env"),
        ("${EMPTY:?set it in .env}", "EMPTY", "set it in .env"),
        ("${UNSET?is needed}", "UNSET", "is needed"),
        ("prefix ${UNSET:?about ${SET}} suffix", "UNSET", "about value"),
    ],
)
def test_a_required_variable_without_a_value_is_an_error_naming_it(
    template: str, variable: str, message: str
) -> None:
    with pytest.raises(InterpolationError) as caught:
        interpolate(template, ENV)
    assert caught.value.variable == variable
    assert str(caught.value) == f"required variable {variable} is missing a value: {message}"


def test_a_default_is_resolved_before_use_as_compose_go_does() -> None:
    # SET has a value, so the default is not used; Compose still evaluates it, and fails.
    with pytest.raises(InterpolationError, match="NEEDED"):
        interpolate("${SET:-${NEEDED:?x}}", ENV)


@pytest.mark.parametrize("template", ["$1", "cost: 5$", "$ {SET}", "${}", "${SET", "${SET:+x}",
                                      "${SET B}", "${9LIVES}"])  # fmt: skip
def test_an_invalid_template_is_an_error(template: str) -> None:
    with pytest.raises(InterpolationError, match="invalid interpolation format"):
        interpolate(template, ENV)


# ---------------------------------------------------------------- .env files


def test_env_files_read_as_compose_reads_them() -> None:
    text = "\n".join(
        [
            "# a comment",
            "",
            "PLAIN=abc",
            "  SPACED = padded value  ",
            "export EXPORTED=yes",
            "INLINE=kept # dropped",
            "HASH=a#b",
            "EMPTY=",
            "SINGLE='$PLAIN stays # as written'",
            'DOUBLE="line\\tbreak \\"quoted\\" ${PLAIN} \\$literal" # comment',
            "REFERS=${PLAIN}-${FROM_SHELL:-none}",
            "DOLLARS=$$PLAIN",
        ]
    )
    assert parse_dotenv(text, {"FROM_SHELL": "shell"}) == {
        "PLAIN": "abc",
        "SPACED": "padded value",
        "EXPORTED": "yes",
        "INLINE": "kept",
        "HASH": "a#b",
        "EMPTY": "",
        "SINGLE": "$PLAIN stays # as written",
        "DOUBLE": 'line\tbreak "quoted" abc $literal',
        "REFERS": "abc-shell",
        "DOLLARS": "$PLAIN",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("JUST_A_NAME", "line 1: expected KEY=value"),
        ("A=1\n=2", "line 2: expected KEY=value"),
        ('A="unclosed', 'unclosed " quote'),
        ("A='x' y", "text after the closing quote"),
        ("A=${B:?needed}", "required variable B"),
    ],
)
def test_a_malformed_env_file_is_refused(text: str, message: str) -> None:
    with pytest.raises(InterpolationError, match=message):
        parse_dotenv(text)


# ---------------------------------------------------------------- YAML, schema, load


def test_yaml_is_read_as_yaml_1_2_like_compose() -> None:
    data = read_yaml("a: yes\nb: no\nc: on\nd: 55:55\ne: true\nf: 5\ng: 1.5\nh: ~\ni: 0x1f\n")
    assert data == {"a": "yes", "b": "no", "c": "on", "d": "55:55", "e": True, "f": 5,
                    "g": 1.5, "h": None, "i": 31}  # fmt: skip


def test_anchors_and_merge_keys_resolve_and_explicit_keys_win() -> None:
    data = read_yaml(
        "x-env: &env\n  A: from-anchor\n  B: from-anchor\n"
        "svc:\n  environment:\n    <<: *env\n    B: explicit\n"
    )
    assert data["svc"]["environment"] == {"A": "from-anchor", "B": "explicit"}


def test_a_key_written_twice_in_one_mapping_is_an_error() -> None:
    with pytest.raises(ComposeError, match="duplicate key 'image'"):
        read_yaml("services:\n  app:\n    image: a\n    image: b\n")


def test_the_vendored_schema_is_the_compose_specification() -> None:
    assert SCHEMA_PATH.exists()
    assert schema()["title"] == "Compose Specification"


def test_the_schema_rejects_what_compose_rejects() -> None:
    validate({"services": {"app": {"image": "x", "restart": "unless-stopped"}}})
    with pytest.raises(ComposeError, match=r"services\.app: 'imagee' does not match"):
        validate({"services": {"app": {"imagee": "x"}}})
    with pytest.raises(ComposeError, match=r"services\.app\.depends_on"):
        validate({"services": {"app": {"image": "x", "depends_on": {"db": {"condition": "up"}}}}})
    with pytest.raises(ComposeError, match=r"services\.app\.restart: 5 is not of type 'string'"):
        validate({"services": {"app": {"image": "x", "restart": 5}}})


COMPOSE = """
x-env: &env
  PASSWORD: ${PASSWORD:?set it in .env}
  LEVEL: ${LEVEL:-info}
services:
  app:
    image: app:${TAG-latest}
    restart: no
    environment:
      <<: *env
      EXTRA: "1"
    healthcheck:
      test: ["CMD-SHELL", "ping $$HOSTNAME"]
"""


def test_load_resolves_a_file_from_its_env_file_and_environment(tmp_path: Path) -> None:
    compose = tmp_path / "compose.yml"
    compose.write_text(COMPOSE)
    env_file = tmp_path / ".env"
    env_file.write_text("PASSWORD=from-file\nTAG=1.2.3\nLEVEL=\n")
    unset: set[str] = set()
    config = load(compose, env_file=env_file, environ={"TAG": "from-shell"}, unset=unset)
    app = config["services"]["app"]
    assert app["image"] == "app:from-shell"  # the environment wins over the .env file
    assert app["restart"] == "no"
    assert app["environment"] == {"PASSWORD": "from-file", "LEVEL": "info", "EXTRA": "1"}
    assert app["healthcheck"]["test"] == ["CMD-SHELL", "ping $HOSTNAME"]
    assert unset == set()


def test_load_names_a_missing_required_variable_and_where_it_is(tmp_path: Path) -> None:
    compose = tmp_path / "compose.yml"
    compose.write_text(COMPOSE)
    with pytest.raises(ComposeError) as caught:
        load(compose)
    assert caught.value.variable == "PASSWORD"
    assert "x-env.PASSWORD" in str(caught.value)
    assert "required variable PASSWORD is missing a value: set it in .env" in str(caught.value)


def test_load_validates_the_file_after_interpolation(tmp_path: Path) -> None:
    compose = tmp_path / "compose.yml"
    compose.write_text(
        "services:\n  db:\n    image: x\n  app:\n    image: x\n    depends_on:\n"
        "      db:\n        condition: ${CONDITION:-healthy}\n"
    )
    with pytest.raises(ComposeError, match=r"services\.app\.depends_on"):
        load(compose)  # "healthy" is not a condition Compose knows
    config = load(compose, environ={"CONDITION": "service_healthy"})
    assert config["services"]["app"]["depends_on"]["db"]["condition"] == "service_healthy"
