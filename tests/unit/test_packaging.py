"""The two locks and the image: the image gets the runtime dependencies, and nothing else.

``requirements.lock`` must be exactly the dependency closure of ``[project.dependencies]``
and ``requirements-dev.lock`` that of the runtime plus ``[project.optional-dependencies].dev``,
at the same versions. The closure is computed from the metadata of the packages installed
in this virtualenv (built from the dev lock), so a dependency added to pyproject.toml
without ``make lock`` fails here.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_LOCK = ROOT / "requirements.lock"
DEV_LOCK = ROOT / "requirements-dev.lock"
DOCKERFILE = ROOT / "Dockerfile"
# PyYAML is not here: uvicorn[standard] reads its log configuration with it at run time.
DEV_TOOLS = ("pytest", "pytest-timeout", "hypothesis", "ruff", "jsonschema", "playwright")


def pins(lock: Path) -> dict[str, str]:
    result = {}
    for line in lock.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version, f"{lock.name}: not a pin: {line!r}"
        result[canonicalize_name(name)] = version
    return result


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def closure(requirements: Iterable[str]) -> set[str]:
    """Every distribution that ``requirements`` need here, extras and markers applied."""
    todo = [Requirement(r) for r in requirements]
    done: set[tuple[str, frozenset[str]]] = set()
    names: set[str] = set()
    while todo:
        req = todo.pop()
        name, extras = canonicalize_name(req.name), frozenset(req.extras)
        if (name, extras) in done:
            continue
        done.add((name, extras))
        names.add(name)
        for spec in metadata.requires(name) or []:
            child = Requirement(spec)
            wanted = child.marker is None or any(
                child.marker.evaluate({"extra": extra}) for extra in ("", *extras)
            )
            if wanted:
                todo.append(child)
    return names


def test_the_runtime_lock_is_exactly_what_the_runtime_dependencies_need() -> None:
    needed = closure(project()["dependencies"])
    locked = set(pins(RUNTIME_LOCK))
    assert needed - locked == set(), "in pyproject.toml but not locked: run make lock"
    assert locked - needed == set(), "locked but not needed at run time: run make lock"


def test_the_runtime_lock_holds_no_dev_tool() -> None:
    assert set(pins(RUNTIME_LOCK)) & set(DEV_TOOLS) == set()
    dev_only = closure(project()["optional-dependencies"]["dev"]) - closure(
        project()["dependencies"]
    )
    assert dev_only >= {"pytest", "hypothesis", "ruff"}
    assert set(pins(RUNTIME_LOCK)) & dev_only == set()


def test_the_dev_lock_is_the_runtime_lock_plus_the_dev_tools_at_the_same_versions() -> None:
    runtime, dev = pins(RUNTIME_LOCK), pins(DEV_LOCK)
    differing = {n: (v, dev.get(n)) for n, v in runtime.items() if dev.get(n) != v}
    assert differing == {}, "the two locks disagree: run make lock"
    wanted = closure([*project()["dependencies"], *project()["optional-dependencies"]["dev"]])
    assert set(dev) == wanted
    assert set(DEV_TOOLS) <= set(dev)


def test_the_virtualenv_is_built_from_the_dev_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    stamp = re.search(r"^\$\(STAMP\):(.*)\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert stamp is not None
    prerequisites, recipe = stamp.groups()
    assert "requirements-dev.lock" in prerequisites.split()
    assert "-r requirements-dev.lock" in recipe
    assert "requirements.lock" not in recipe.replace("requirements-dev.lock", "")


# ---------------------------------------------------------------- the image


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def dockerignored(path: str) -> bool:
    """Docker's rule for one path: the last matching pattern of .dockerignore wins."""
    ignored = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            ignored = not negate
    return ignored


def test_the_image_installs_the_runtime_lock_only() -> None:
    instructions = dockerfile_instructions()
    text = "\n".join(args for _, args in instructions)  # comments may name the dev lock
    assert "requirements-dev.lock" not in text
    assert "[dev]" not in text
    copies = [args.split() for op, args in instructions if op == "COPY"]
    assert ["requirements.lock", "/tmp/requirements.lock"] in copies
    installs = [args for op, args in instructions if op == "RUN" and "pip install" in args]
    assert installs, "the Dockerfile installs nothing?"
    for command in installs:
        for step in command.split("&&"):
            if "pip install" not in step:
                continue
            args = step.split()
            if "-r" in args:
                assert args[args.index("-r") + 1] == "/tmp/requirements.lock", step
            # Exactly the lock and the project: pip may not resolve anything on its own.
            assert "--no-deps" in args, step
    assert any("pip check" in command for command in installs)


@pytest.mark.parametrize(
    ("path", "in_context"),
    [
        ("requirements.lock", True),
        ("pyproject.toml", True),
        ("shared/config.py", True),
        ("worker/factory.py", True),
        ("entrypoints/cli/app.py", True),
        ("shared/migrations/app_grants.sql", True),
        ("deploy/postgres/initdb/10-credits-app-role.sh", False),
        ("requirements-dev.lock", False),
        ("tests/unit/test_packaging.py", False),
        (".env", False),
        (".venv/bin/python", False),
        ("shared/__pycache__/config.cpython-311.pyc", False),
    ],
)
def test_the_build_context_holds_what_the_image_needs_and_no_more(
    path: str, in_context: bool
) -> None:
    assert dockerignored(path) is (not in_context)
    if in_context and not path.endswith("__pycache__"):
        assert (ROOT / path).exists(), path


def test_the_base_image_is_pinned_to_a_patch_release() -> None:
    images = [args.split()[0] for op, args in dockerfile_instructions() if op == "FROM"]
    assert images and all(re.fullmatch(r"python:3\.11\.\d+-slim-\w+", i) for i in images), images
