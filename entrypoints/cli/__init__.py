"""The ``credits`` command line: an operator's tool over the ledger and the pipeline.

Commands live in modules by subject; importing them registers them on :data:`cli`.
"""

from entrypoints.cli import api, directory, jobs, money, ops  # noqa: F401  (registers commands)
from entrypoints.cli.app import cli, main, run

__all__ = ["cli", "main", "run"]
