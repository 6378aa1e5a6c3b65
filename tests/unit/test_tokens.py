"""API tokens: made by support, shown once, stored hashed, refused once revoked or when
their member is deactivated."""

from __future__ import annotations

import hashlib
import json

import pytest
from sqlalchemy import select

from entrypoints.cli import main
from shared.db import Database
from shared.errors import InvalidRequest, NotAuthenticated, NotFound, PermissionDenied
from shared.migrations import current, downgrade, upgrade
from shared.models import ApiToken
from shared.services import directory, tokens
from shared.services.auth import Actor
from tests.factories import funded_member


@pytest.fixture
def member(db: Database) -> int:
    return funded_member(db).member_id


def stored(db: Database, token_id: int) -> ApiToken:
    with db.unit_of_work() as session:
        return session.scalar(select(ApiToken).where(ApiToken.id == token_id))


def test_a_token_is_shown_once_and_only_its_hash_is_stored(db: Database, member: int) -> None:
    made = tokens.create_token(db, member_id=member, name="Ava's laptop")
    prefix, token_id, secret = made.token.split("_", 2)
    assert (prefix, int(token_id)) == ("credits", made.id)
    row = stored(db, made.id)
    assert row.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in row.secret_hash and row.member_id == member
    listed = json.dumps(tokens.list_tokens(db))
    assert secret not in listed and row.secret_hash not in listed
    assert tokens.verify(db, made.token) == tokens.Credential(made.id, "Ava's laptop", member)


@pytest.mark.parametrize(
    "presented",
    ["", "nope", "credits_1_", "credits_0_" + "a" * 43, "credits_99_" + "a" * 43,
     "credits_1_" + "a" * 43, "Bearer credits_1_" + "a" * 43, "credits_1_" + "a" * 500],
)  # fmt: skip
def test_a_wrong_unknown_or_malformed_token_gets_one_answer(
    db: Database, member: int, presented: str
) -> None:
    tokens.create_token(db, member_id=member, name="real")
    with pytest.raises(NotAuthenticated) as refused:
        tokens.verify(db, presented)
    assert str(refused.value) == tokens.INVALID


def test_a_revoked_token_is_refused_and_revoking_again_changes_nothing(
    db: Database, member: int
) -> None:
    made = tokens.create_token(db, member_id=member, name="old")
    first = tokens.revoke(db, made.id)
    again = tokens.revoke(db, made.id)
    assert (first["replayed"], again["replayed"]) == (False, True)
    assert again["revoked_at"] == first["revoked_at"]
    with pytest.raises(NotAuthenticated, match=f"API token {made.id} was revoked"):
        tokens.verify(db, made.token)
    with pytest.raises(NotAuthenticated):
        tokens.credential_of(db, made.id)
    with pytest.raises(NotFound):
        tokens.revoke(db, 999)


def test_a_deactivated_members_token_stops_working_and_they_get_no_new_one(
    db: Database, member: int
) -> None:
    made = tokens.create_token(db, member_id=member, name="phone")
    directory.deactivate(db, member)
    with pytest.raises(NotAuthenticated, match="deactivated member"):
        tokens.verify(db, made.token)
    with pytest.raises(InvalidRequest, match="is deactivated"):
        tokens.create_token(db, member_id=member, name="another")


def test_only_support_makes_lists_and_revokes_tokens(db: Database, member: int) -> None:
    made = tokens.create_token(db, member_id=None, name="ops")
    assert tokens.verify(db, made.token).actor.is_support
    as_member = Actor(member)
    for attempt in (
        lambda: tokens.create_token(db, member_id=member, name="x", actor=as_member),
        lambda: tokens.list_tokens(db, actor=as_member),
        lambda: tokens.revoke(db, made.id, actor=as_member),
    ):
        with pytest.raises(PermissionDenied):
            attempt()
    with pytest.raises(NotFound):
        tokens.create_token(db, member_id=12345, name="nobody")
    with pytest.raises(InvalidRequest, match="control characters"):
        tokens.create_token(db, member_id=member, name="bad\x1b[31m")


def test_last_use_is_written_once_a_minute_not_on_every_request(db: Database, member: int) -> None:
    made = tokens.create_token(db, member_id=member, name="busy")
    assert stored(db, made.id).last_used_at is None
    tokens.verify(db, made.token)
    first = stored(db, made.id).last_used_at
    tokens.verify(db, made.token)
    assert first is not None and stored(db, made.id).last_used_at == first


def test_the_migration_adds_and_removes_the_table(sqlite_url: str) -> None:
    downgrade(sqlite_url, "0005")
    db = Database(sqlite_url)
    try:
        with pytest.raises(Exception, match="api_tokens"):
            tokens.list_tokens(db)
        upgrade(sqlite_url)
        assert current(sqlite_url) == "0006" and tokens.list_tokens(db) == []
    finally:
        db.dispose()


# ---------------------------------------------------------------- the CLI


@pytest.fixture
def credits(sqlite_url: str, capsys: pytest.CaptureFixture, clean_environment: None):
    def run(*args: object) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["--database-url", sqlite_url, *(str(a) for a in args)])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def test_the_cli_makes_lists_and_revokes_tokens(credits, db: Database, member: int) -> None:
    code, out, err = credits("tokens", "create", "--member", member, "--name", "laptop", "--json")
    assert (code, err) == (0, "")
    made = json.loads(out)
    assert tokens.verify(db, made["token"]).member_id == member
    code, out, _ = credits("tokens", "create", "--support", "--name", "ops")
    assert code == 0 and "shown only now" in out and "credits_" in out
    code, out, _ = credits("tokens", "list", "--json")
    listed = json.loads(out)["tokens"]
    assert [t["role"] for t in listed] == ["support", "member"]
    assert made["token"] not in out
    code, out, _ = credits("tokens", "revoke", made["id"], "--json")
    assert code == 0 and json.loads(out)["revoked_at"]
    with pytest.raises(NotAuthenticated):
        tokens.verify(db, made["token"])


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("tokens", "create"), 2, "give exactly one of --member ID or --support"),
        (("tokens", "create", "--member", 1, "--support"), 2, "give exactly one of"),
        (("tokens", "create", "--support"), 2, "--support needs --name"),
        (("--as", 1, "tokens", "create", "--member", 1), 4, "only support may"),
        (("tokens", "create", "--member", 77), 3, "member 77 does not exist"),
    ],
)
def test_the_cli_refuses_bad_token_requests(credits, member: int, args, code, message) -> None:
    got, _out, err = credits(*args)
    assert got == code
    assert message in err
