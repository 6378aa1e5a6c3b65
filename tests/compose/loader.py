"""A Compose file as Compose resolves it: YAML, then interpolation, then the spec's schema.

1. YAML as Compose (Go's yaml.v3) reads it: anchors, aliases and ``<<`` merge keys work;
   ``yes``/``no``/``on``/``off`` stay strings and ``55:55`` is not a base-60 number
   (PyYAML's YAML 1.1 habits); a key written twice in one mapping is an error.
2. Every string value (not keys) is interpolated from the ``.env`` file and the given
   environment, which wins over the file, as in Compose (see ``interpolation``).
3. The result is validated against the Compose Specification's JSON schema.

The schema, ``compose-spec.json`` next to this file, is vendored unchanged from
https://github.com/compose-spec/compose-spec/blob/170098ba07d9f53c383a41bfd4c5166b0a4529a6/schema/compose-spec.json
(repository HEAD 170098ba07d9f53c383a41bfd4c5166b0a4529a6 of 2026-06-23; the file itself last
changed in a08f8d51631b7127ddac3d2c65537db429d0f1d0 of 2025-10-28), Apache License 2.0.
``SCHEMA_SHA256`` pins its content; to update it, copy the new file and its hash together.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from tests.compose.interpolation import InterpolationError, interpolate, parse_dotenv

SCHEMA_PATH = Path(__file__).with_name("compose-spec.json")
SCHEMA_SHA256 = "1f91e091f16b2dd50ab8860e02bb391d22df553d91c145eacedb1b6eff9c3f0e"


class ComposeError(ValueError):
    """The file is not a valid Compose file; ``variable`` names a missing required variable."""

    def __init__(self, message: str, variable: str | None = None):
        super().__init__(message)
        self.variable = variable


# ---------------------------------------------------------------- YAML as Compose reads it

_MERGE_TAG = "tag:yaml.org,2002:merge"
_YAML11_ONLY = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}


class ComposeYamlLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans and numbers, and no duplicate keys."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag not in _YAML11_ONLY]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue  # merged keys may be overridden: that is what `<<` is for
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r}", key_node.start_mark,
                )  # fmt: skip
            seen.add(key)
        return super().construct_mapping(node, deep)


ComposeYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
# Integers before floats: a resolver list is tried in order, and "5" matches both.
ComposeYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
    list("-+0123456789"),
)
ComposeYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def read_yaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=ComposeYamlLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ComposeError(f"not valid YAML: {exc}") from None


# ---------------------------------------------------------------- interpolation


def interpolate_tree(
    node: Any, env: Mapping[str, str], unset: set[str] | None = None, path: str = ""
) -> Any:
    """Every string value of ``node`` interpolated; mapping keys are left alone, as in Compose."""
    if isinstance(node, str):
        try:
            return interpolate(node, env, unset)
        except InterpolationError as exc:
            raise ComposeError(
                f"error while interpolating {path or 'the file'}: {exc}", exc.variable
            ) from None
    if isinstance(node, dict):
        return {
            key: interpolate_tree(value, env, unset, f"{path}.{key}" if path else str(key))
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [interpolate_tree(item, env, unset, f"{path}[{i}]") for i, item in enumerate(node)]
    return node


# ---------------------------------------------------------------- the schema


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    data = SCHEMA_PATH.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SCHEMA_SHA256:
        raise ComposeError(f"{SCHEMA_PATH.name} changed (sha256 {digest}); see loader.py")
    return json.loads(data)


def validate(config: Any) -> None:
    """Raise ComposeError listing every place where ``config`` breaks the Compose schema."""
    import jsonschema

    validator = jsonschema.Draft7Validator(schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors]
        raise ComposeError("not a valid Compose file:\n" + "\n".join(lines))


# ---------------------------------------------------------------- all three


def load(
    path: Path,
    *,
    env_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    unset: set[str] | None = None,
) -> dict[str, Any]:
    """``path`` resolved as ``docker compose --env-file ENV_FILE config`` would resolve it.

    ``environ`` plays the shell's environment (it wins over the file); it is empty unless
    given, so a test sees only what it passes. Names used without a value and without a
    default are added to ``unset``.
    """
    environ = dict(environ or {})
    env = parse_dotenv(env_file.read_text(), environ) if env_file is not None else {}
    env.update(environ)
    config = read_yaml(path.read_text())
    if not isinstance(config, dict):
        raise ComposeError(f"{path.name}: the top level must be a mapping")
    config = interpolate_tree(config, env, unset)
    validate(config)
    return config
