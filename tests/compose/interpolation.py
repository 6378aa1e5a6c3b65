"""Compose's variable interpolation and its ``.env`` files, for tests that cannot run Compose.

The rules are those of the Compose Specification (``12-interpolation.md``) as Compose v2
applies them (compose-go ``template``):

- ``$NAME`` and ``${NAME}``: the value, or "" when unset (Compose warns; :func:`interpolate`
  records the name in ``unset``);
- ``${NAME:-default}``: the default when NAME is unset or empty; ``${NAME-default}``: only
  when unset;
- ``${NAME:?message}``: an error naming NAME when it is unset or empty; ``${NAME?message}``:
  only when unset;
- defaults and messages are interpolated themselves (``${A:-${B:-x}}``), before use, as
  compose-go does;
- ``$$`` is a literal ``$``;
- anything else after a ``$`` (``$1``, ``${}``, ``${A:+x}``, an unclosed ``${``) is an
  invalid template, an error as in Compose.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

NAME = re.compile(r"[_A-Za-z][_A-Za-z0-9]*")
# Longest first: ":-" must not be read as a name followed by "-" with a ":" default.
OPERATORS = (":-", ":?", "-", "?")
MAX_DEPTH = 16


class InterpolationError(ValueError):
    """A template Compose refuses; ``variable`` names the required variable, if one is missing."""

    def __init__(self, message: str, variable: str | None = None):
        super().__init__(message)
        self.variable = variable


def interpolate(
    text: str, env: Mapping[str, str], unset: set[str] | None = None, *, _depth: int = 0
) -> str:
    """``text`` with every substitution applied from ``env``."""
    if _depth > MAX_DEPTH:
        raise InterpolationError(f"interpolation nested more than {MAX_DEPTH} deep: {text!r}")
    out: list[str] = []
    i = 0
    while (dollar := text.find("$", i)) >= 0:
        out.append(text[i:dollar])
        value, i = _substitution(text, dollar, env, unset, _depth)
        out.append(value)
    out.append(text[i:])
    return "".join(out)


def _substitution(
    text: str, start: int, env: Mapping[str, str], unset: set[str] | None, depth: int
) -> tuple[str, int]:
    """The value of the substitution at ``text[start] == "$"`` and the index after it."""
    following = text[start + 1 : start + 2]
    if following == "$":
        return "$", start + 2
    if following == "{":
        return _braced(text, start, env, unset, depth)
    name = NAME.match(text, start + 1)
    if name is None:
        raise InterpolationError(
            f"invalid interpolation format in {text!r}: use $NAME, ${{NAME}} or $$ for a '$'"
        )
    return _lookup(name.group(), env, unset), name.end()


def _braced(
    text: str, start: int, env: Mapping[str, str], unset: set[str] | None, depth: int
) -> tuple[str, int]:
    end = _closing_brace(text, start + 2)
    if end < 0:
        raise InterpolationError(f"invalid interpolation format in {text!r}: unclosed '${{'")
    body = text[start + 2 : end]
    name = NAME.match(body)
    if name is None:
        raise InterpolationError(f"invalid interpolation format in {text!r}: ${{{body}}}")
    variable, rest = name.group(), body[name.end() :]
    if not rest:
        return _lookup(variable, env, unset), end + 1
    operator = next((op for op in OPERATORS if rest.startswith(op)), None)
    if operator is None:
        raise InterpolationError(f"invalid interpolation format in {text!r}: ${{{body}}}")
    word = interpolate(rest[len(operator) :], env, unset, _depth=depth + 1)
    value = env.get(variable)
    missing = value is None or (operator.startswith(":") and value == "")
    if operator.endswith("-"):
        return (word if missing else value), end + 1
    if missing:
        raise InterpolationError(
            f"required variable {variable} is missing a value: {word}", variable=variable
        )
    return value, end + 1


def _closing_brace(text: str, i: int) -> int:
    """Index of the ``}`` that closes the ``${`` just before ``text[i]``; -1 if none."""
    depth = 1
    while i < len(text):
        if text.startswith("$$", i):
            i += 2
            continue
        if text.startswith("${", i):
            depth += 1
            i += 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _lookup(name: str, env: Mapping[str, str], unset: set[str] | None) -> str:
    value = env.get(name)
    if value is None:
        if unset is not None:
            unset.add(name)
        return ""
    return value


# ---------------------------------------------------------------- .env files

_ASSIGNMENT = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*=\s*(.*)$")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "$": "$$"}


def parse_dotenv(text: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables of a Compose ``.env`` file, in the subset of its syntax we support.

    ``KEY=value`` lines, optional ``export``, ``#`` comments (inline ones need a space
    before them in unquoted values), ``'literal'`` and ``"escaped"`` values. Unquoted and
    double-quoted values are interpolated from the variables above them and ``environ``,
    as Compose does; single-quoted ones are taken as written. Multi-line values are not
    supported and are refused, rather than misread.
    """
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _ASSIGNMENT.match(line)
        if match is None:
            raise InterpolationError(f".env line {number}: expected KEY=value, got {line!r}")
        key, raw = match.groups()
        lookup = {**(environ or {}), **values}
        try:
            values[key] = _dotenv_value(raw, lookup)
        except InterpolationError as exc:
            raise InterpolationError(f".env line {number} ({key}): {exc}", exc.variable) from None
    return values


def _dotenv_value(raw: str, lookup: Mapping[str, str]) -> str:
    raw = raw.strip()
    if raw[:1] in ("'", '"'):
        quote = raw[0]
        value, end = _quoted(raw, quote)
        trailing = raw[end + 1 :].strip()
        if trailing and not trailing.startswith("#"):
            raise InterpolationError(f"text after the closing quote: {trailing!r}")
        return value if quote == "'" else interpolate(value, lookup)
    value = re.split(r"\s#", raw, maxsplit=1)[0].rstrip()
    return interpolate(value, lookup)


def _quoted(raw: str, quote: str) -> tuple[str, int]:
    out: list[str] = []
    i = 1
    while i < len(raw):
        char = raw[i]
        if quote == '"' and char == "\\" and i + 1 < len(raw):
            # "\$" keeps a literal dollar: written back as "$$" so interpolation leaves it.
            out.append(_ESCAPES.get(raw[i + 1], "\\" + raw[i + 1]))
            i += 2
            continue
        if char == quote:
            return "".join(out), i
        out.append(char)
        i += 1
    raise InterpolationError(f"unclosed {quote} quote (multi-line values are not supported)")
