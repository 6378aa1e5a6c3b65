"""Compose files resolved without Compose: interpolation, ``.env`` files, YAML, the schema.

Tests use this where no ``docker compose`` is installed; ``test_compose.py`` also runs the
real one when the machine has it, and checks that both agree.
"""

from tests.compose.interpolation import InterpolationError, interpolate, parse_dotenv
from tests.compose.loader import ComposeError, interpolate_tree, load, read_yaml, validate

__all__ = [
    "ComposeError",
    "InterpolationError",
    "interpolate",
    "interpolate_tree",
    "load",
    "parse_dotenv",
    "read_yaml",
    "validate",
]
