"""The ``credits`` command group, its context, its output, and its one error boundary.

Every command takes ``--json`` and then prints exactly one JSON object on stdout; without
it, a readable table. Every failure is one line on stderr (one JSON object under
``--json``) and a documented exit code; no traceback reaches a user. The CLI acts as
support unless ``--as MEMBER_ID`` names an existing member, and then the services' role
rules apply. It holds the database's credentials: it is an operator's tool.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import click
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError, OperationalError

from shared.config import Settings, load_settings
from shared.db import Database
from shared.errors import CreditsError, DatabaseUnavailable, ServiceUnavailable
from shared.services.auth import SUPPORT, Actor

# Row ids are BIGINT: a larger number is a usage error, not a driver OverflowError.
MAX_ID = 2**63 - 1
ID = click.IntRange(1, MAX_ID)
USAGE_EXIT = 2
EXIT_CODES = """\b
Exit codes: 0 ok; 1 reconcile found drift; 2 bad input; 3 not found; 4 not allowed;
5 insufficient credits; 6 idempotency conflict; 7 hold already resolved; 8 schema
missing; 11 database unreachable; 12 no outcome in time (send --wait); 13 broker
unreachable; 14 job parked awaiting credits (send --wait)."""


@dataclass
class Context:
    settings_overrides: dict[str, Any]
    as_json: bool = False
    actor: Actor = SUPPORT
    _db: Database | None = None
    _settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(**self.settings_overrides)
        return self._settings

    def db(self, *, require_schema: bool = True) -> Database:
        if self._db is None:
            self._db = Database(self.settings.database_url)
            if require_schema:
                self._db.require_schema()
                from shared.services.directory import require_actor

                require_actor(self._db, self.actor)
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.dispose()


def _as_member(value: str | None) -> Actor | None:
    if value is None:
        return None
    if not value.isdecimal() or not 1 <= int(value) <= MAX_ID:
        raise click.BadParameter(f"takes a member id (a whole number), got {value!r}",
                                 param_hint="--as")  # fmt: skip
    return Actor(int(value))


@dataclass
class Output:
    data: dict[str, Any]
    render: Callable[[Any, dict[str, Any]], None] | None = None


def command_options(fn: Callable) -> Callable:
    """Add ``--json`` and ``--as`` to a command; either may also come before the command."""

    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
    @click.option("--as", "as_member", metavar="MEMBER_ID", help="Act as this member.")
    @click.pass_obj
    @wraps(fn)
    def wrapper(ctx: Context, *args: Any, as_json: bool, as_member: str | None, **kwargs: Any):
        ctx.as_json = ctx.as_json or as_json
        ctx.actor = _as_member(as_member) or ctx.actor
        if not ctx.actor.is_support:
            ctx.db()  # --as must name an existing, active member, whatever the command
        result = fn(ctx, *args, **kwargs)
        if result is not None:
            emit(ctx, result)

    return wrapper


def emit(ctx: Context, result: Output) -> None:
    from entrypoints.cli import render

    if ctx.as_json:
        click.echo(json.dumps(result.data, default=str))
        return
    console = render.console()
    (result.render or render.mapping)(console, result.data)


def _version() -> str:
    try:
        return version("credits-worker")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "unknown"


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES)
@click.version_option(_version(), "--version", prog_name="credits")
@click.option("--database-url", help="Overrides CREDITS_DATABASE_URL.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--as", "as_member", metavar="MEMBER_ID", help="Act as this member.")
@click.pass_context
def cli(click_ctx: click.Context, database_url: str | None, as_json: bool, as_member: str | None):
    """Credits: top up, allocate, spend and audit the platform's in-app currency.

    \b
    Start with:
      credits db upgrade
      credits account create Acme --credits 50
      credits tree 1
    """
    overrides = {"database_url": database_url} if database_url else {}
    click_ctx.obj = Context(overrides, as_json, _as_member(as_member) or SUPPORT)
    click_ctx.call_on_close(click_ctx.obj.close)


# ---------------------------------------------------------------- the error boundary


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    as_json = "--json" in args
    try:
        cli.main(args=args, prog_name="credits", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:
        _error({"error": "Aborted", "message": "aborted"}, as_json)
        return 130
    except click.ClickException as exc:
        if as_json:
            _error({"error": "UsageError", "message": exc.format_message()}, True)
        else:
            exc.show()
        return USAGE_EXIT if isinstance(exc, click.UsageError) else exc.exit_code
    except CreditsError as exc:
        _error(exc.as_dict(), as_json)
        return exc.exit_code
    except RedisError as exc:
        failure = ServiceUnavailable(f"Redis is not answering ({type(exc).__name__}): {exc}")
        _error(failure.as_dict(), as_json)
        return failure.exit_code
    except OperationalError as exc:
        failure = DatabaseUnavailable(f"database error: {str(exc.orig).splitlines()[0]}")
        _error(failure.as_dict(), as_json)
        return failure.exit_code
    except DBAPIError as exc:  # the database answered, and refused (a privilege, say)
        refused = f"the database refused: {str(exc.orig).splitlines()[0]}"
        _error({"error": "DatabaseError", "message": refused}, as_json)
        return 1
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def _error(payload: dict[str, str], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(payload), err=True)
    else:
        click.echo(f"error: {payload['message']}", err=True)


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
