"""The HTTP API against a real ``credits serve`` process on PostgreSQL and Redis.

Every test seeds its own database (two accounts, a token per role) and starts its own
server on its own Redis DB and key prefix; the stack stops the server afterwards.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from sqlalchemy import func, select

from shared.db import Database
from shared.models import LedgerTransaction
from shared.pricing import load_catalog
from shared.schemas import parse_job
from shared.services import directory, jobs, ledger, tokens
from tests.factories import ALL_DELIVERED, as_env, email, note
from tests.helpers import wait_until
from tests.integration.api_harness import ROLES, ApiServer, World, seed, start_api
from tests.integration.harness import Stack

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
WHO = ("support", "owner", "admin", "member", "other")


@pytest.fixture
def world(pg_db: Database) -> World:
    world = seed(pg_db)
    ledger.allocate(pg_db, "member", world.members["Olivia"], amount=20)
    return world


@pytest.fixture
def api(stack: Stack, world: World) -> ApiServer:
    return start_api(stack)


def token_of(world: World, who: str) -> str:
    return world.tokens[ROLES.get(who, who)]


def call(api: ApiServer, world: World, who: str, method: str, path: str, **kw: Any):
    with api.client(token_of(world, who)) as client:
        return client.request(method, path, **kw)


def post(api: ApiServer, world: World, who: str, path: str, key: str, **body: Any):
    """A money-moving POST as ``who``, with one Idempotency-Key."""
    return call(api, world, who, "POST", path, json=body, headers={"Idempotency-Key": key})


def allocate(api: ApiServer, world: World, who: str, key: str, **body: Any):
    return post(api, world, who, "/v1/allocations", key, **body)


def record_job(db: Database, job_id: str, member_id: int) -> None:
    """A job as a worker records it, without a worker: received, priced, held, submitted."""
    jobs.accept(db, parse_job(note(job_id, member_id)), load_catalog(), hold_ttl_s=600,
                max_wait_s=600, attempt_window_s=60)  # fmt: skip


def transactions(db: Database) -> int:
    with db.unit_of_work() as session:
        return session.scalar(select(func.count()).select_from(LedgerTransaction))


def available(db: Database, kind: str, row_id: int) -> int:
    from shared.services.balances import balance

    return balance(db, kind, row_id).available


# ---------------------------------------------------------------- every role x operation

# (method, path, JSON body, expected status for support, owner, admin, member, other
# account's owner). Paths and bodies name rows of Acme, the first account. Owner is
# Olivia, admin is Adam (Sales), member is Mia (Sales), other is Gus (Globex).
MATRIX: dict[str, tuple[str, str, dict | None, tuple[int, ...]]] = {
    "who am I": ("GET", "/v1/me", None, (200, 200, 200, 200, 200)),
    "read the account tree": (
        "GET", "/v1/accounts/{account}/tree", None, (200, 200, 200, 403, 404)),
    "allocate to the admin's workspace": (
        "POST", "/v1/allocations", {"workspace_id": "{sales}", "amount": 5},
        (201, 201, 201, 403, 404)),
    "allocate to another workspace": (
        "POST", "/v1/allocations", {"workspace_id": "{support_ws}", "amount": 5},
        (201, 201, 403, 403, 404)),
    "allocate to a member": (
        "POST", "/v1/allocations", {"member_id": "{Mia}", "amount": 2},
        (201, 201, 201, 403, 404)),
    "reclaim from a member": (
        "POST", "/v1/allocations", {"member_id": "{Mia}", "amount": -1},
        (201, 201, 201, 403, 404)),
    "reclaim from the owner": (
        "POST", "/v1/allocations", {"member_id": "{Olivia}", "amount": -1},
        (201, 201, 403, 403, 404)),
    "read a member's history": (
        "GET", "/v1/members/{Mia}/history", None, (200, 200, 200, 200, 404)),
    "read another member's history": (
        "GET", "/v1/members/{Nora}/history", None, (200, 200, 200, 403, 404)),
    "list jobs": ("GET", "/v1/jobs", None, (200, 200, 200, 200, 200)),
    "list another member's jobs": (
        "GET", "/v1/jobs?member_id={Nora}", None, (200, 200, 200, 403, 404)),
    "read another member's job": (
        "GET", "/v1/jobs/nora-1?member_id={Nora}", None, (200, 200, 200, 403, 404)),
    "send a job as oneself": (
        "POST", "/v1/jobs", email("{job}", 1) | {"member_id": None},
        (422, 202, 202, 202, 202)),
    "send a job for another member": (
        "POST", "/v1/jobs", email("{job}", 1) | {"member_id": "{Nora}"},
        (202, 403, 403, 403, 403)),
    "top up": ("POST", "/v1/topups", {"account_id": "{account}", "amount": 5},
               (201, 403, 403, 403, 403)),
    "open the event stream": ("GET", "/v1/events", None, (200, 200, 200, 200, 200)),
}  # fmt: skip


def fill(value: Any, names: dict[str, Any]) -> Any:
    """Put the world's ids into a path or body template (``"{Mia}"`` -> 3)."""
    if isinstance(value, str):
        if value.startswith("{") and value.endswith("}") and value[1:-1] in names:
            return names[value[1:-1]]
        return value.format(**names)
    if isinstance(value, dict):
        return {k: fill(v, names) for k, v in value.items() if v is not None}
    return value


@pytest.mark.parametrize("operation", MATRIX)
def test_every_role_gets_the_answer_its_rights_give(
    operation: str, api: ApiServer, world: World, pg_db: Database
) -> None:
    # given Acme's rows, one recorded job of Nora's, and a token per role
    record_job(pg_db, "nora-1", world.members["Nora"])
    method, path, body, expected = MATRIX[operation]
    for n, (who, status) in enumerate(zip(WHO, expected, strict=True)):
        names = {
            "account": world.account,
            "sales": world.sales,
            "support_ws": world.support_ws,
            "job": f"api-{who}-{n}",
            **world.members,
        }
        headers = {"Idempotency-Key": f"{operation}-{who}"}
        # when the role asks
        with api.client(token_of(world, who)) as client:
            if path == "/v1/events":
                with client.stream("GET", path) as response:
                    got = response.status_code
                    kind = response.headers.get("content-type", "")
            else:
                response = client.request(method, fill(path, names), json=fill(body, names),
                                          headers=headers)  # fmt: skip
                got, kind = response.status_code, response.headers.get("content-type", "")
        # then the status is the one its role allows, and a refusal is a problem document
        assert got == status, f"{who}: {operation}: {got} {response.text[:300]}"
        if status >= 400:
            problem = response.json()
            assert kind.startswith("application/problem+json")
            assert problem["status"] == status and problem["code"] and problem["detail"]
        elif path == "/v1/events":
            assert kind.startswith("text/event-stream")


def test_refusals_change_no_balance(api: ApiServer, world: World, pg_db: Database) -> None:
    # given the books before
    before = transactions(pg_db)
    # when a member, an admin and another account try what they may not
    refused = [
        allocate(api, world, "member", "a", member_id=world.members["Mia"], amount=5),
        allocate(api, world, "admin", "b", member_id=world.members["Olivia"], amount=-5),
        allocate(api, world, "other", "c", workspace_id=world.sales, amount=5),
        allocate(api, world, "owner", "d", member_id=world.members["Mia"], set=10_000),
    ]
    # then every one is refused with its own code, and no transaction was written
    codes = [r.json()["code"] for r in refused]
    assert codes == ["PermissionDenied", "PermissionDenied", "NotFound", "InsufficientCredits"]
    assert refused[3].status_code == 409
    assert refused[3].json()["detail"] == (
        f"workspace {world.sales} (Sales) has 230 credits available, 9950 needed"
    )
    assert refused[3].json()["available"] == 230
    assert transactions(pg_db) == before


# ---------------------------------------------------------------- idempotency


def test_the_same_idempotency_key_twice_moves_credits_once(
    api: ApiServer, world: World, pg_db: Database
) -> None:
    mia = world.members["Mia"]
    before = transactions(pg_db)
    # when the owner sends the same allocation twice with one key
    first = allocate(api, world, "owner", "bonus-7", member_id=mia, amount=7)
    again = allocate(api, world, "owner", "bonus-7", member_id=mia, amount=7)
    # then one movement: 201 then a 200 replay with the same transaction
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert again.json()["transaction_id"] == first.json()["transaction_id"]
    assert again.json()["replayed"] is True
    assert transactions(pg_db) == before + 1
    assert available(pg_db, "member", mia) == 57
    # and the same key with another body is a conflict that changes nothing
    other = allocate(api, world, "owner", "bonus-7", member_id=mia, amount=8)
    assert other.status_code == 409
    assert other.json()["code"] == "IdempotencyConflict"
    assert other.json()["detail"] == "idempotency key 'bonus-7' was already used for a " \
        "different request"  # fmt: skip
    assert available(pg_db, "member", mia) == 57


def test_concurrent_requests_with_one_key_move_credits_once(
    api: ApiServer, world: World, pg_db: Database
) -> None:
    before = transactions(pg_db)
    body = {"workspace_id": world.sales, "amount": 11}
    barrier = threading.Barrier(6)

    def one(_: int) -> int:
        with api.client(world.tokens["Olivia"]) as client:
            barrier.wait()
            return client.post("/v1/allocations", json=body,
                               headers={"Idempotency-Key": "race-1"}).status_code  # fmt: skip

    results: list[int] = []
    threads = [threading.Thread(target=lambda i=i: results.append(one(i))) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == [200] * 5 + [201]
    assert transactions(pg_db) == before + 1
    assert available(pg_db, "workspace", world.sales) == 230 + 11


def test_set_makes_the_balance_that_value_and_a_topup_replays(
    api: ApiServer, world: World, pg_db: Database
) -> None:
    nora = world.members["Nora"]
    moved = allocate(api, world, "admin", "s1", member_id=nora, set=25)
    assert moved.status_code == 403  # Adam is Sales' admin, Nora is in Customer Success
    moved = allocate(api, world, "Alex", "s1", member_id=nora, set=25)
    assert moved.status_code == 201 and moved.json()["kind"] == "reclaim"
    assert available(pg_db, "member", nora) == 25
    same = allocate(api, world, "Alex", "s2", member_id=nora, set=25)
    assert same.status_code == 200 and same.json()["amount"] == 0  # nothing moved
    topup = {"account_id": world.account, "amount": 250}
    # an RFC 8941 string key is the same key
    first = post(api, world, "support", "/v1/topups", '"order-9"', **topup)
    again = post(api, world, "support", "/v1/topups", "order-9", **topup)
    assert (first.status_code, again.status_code) == (201, 200)
    assert available(pg_db, "account", world.account) == 1000 - 500 + 250


def test_a_money_moving_request_without_a_key_is_a_400(api: ApiServer, world: World) -> None:
    response = call(api, world, "owner", "POST", "/v1/allocations",
                    json={"workspace_id": world.sales, "amount": 1})  # fmt: skip
    assert response.status_code == 400
    assert response.json()["detail"] == "Idempotency-Key: Field required"


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"workspace_id": 1, "member_id": 2, "amount": 1},
         "body: give exactly one of workspace_id or member_id"),
        ({"workspace_id": 1, "amount": 1, "set": 2}, "body: give exactly one of amount or set"),
        ({"workspace_id": 1, "amount": 0}, "body: amount 0 moves nothing: give a non-zero amount"),
        ({"workspace_id": 1, "amount": 1.5}, "amount: Input should be a valid integer"),
        ({"workspace_id": 1, "set": -1}, "set: Input should be greater than or equal to 0"),
        ({"workspace_id": 1, "ammount": 1}, "ammount: Extra inputs are not permitted"),
    ],
)  # fmt: skip
def test_invalid_allocations_name_the_field(
    body: dict, detail: str, api: ApiServer, world: World
) -> None:
    response = call(api, world, "owner", "POST", "/v1/allocations", json=body,
                    headers={"Idempotency-Key": "x"})  # fmt: skip
    assert response.status_code == 422
    assert response.json()["code"] == "InvalidRequest"
    assert response.json()["detail"] == detail


def test_a_body_that_is_not_json_is_a_400(api: ApiServer, world: World) -> None:
    response = call(
        api,
        world,
        "owner",
        "POST",
        "/v1/allocations",
        content=b"{nope",
        headers={"Idempotency-Key": "x", "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["detail"] == "the request body is not valid JSON"


# ---------------------------------------------------------------- tokens


def test_a_bad_token_is_a_401_that_says_bearer(api: ApiServer, world: World) -> None:
    for header in ("Bearer nope", "Bearer " + world.tokens["Mia"][:-2] + "xx", "Basic abc", ""):
        with httpx.Client(base_url=api.url) as client:
            response = client.get("/v1/me", headers={"Authorization": header} if header else {})
        assert response.status_code == 401, header
        assert response.headers["WWW-Authenticate"].startswith('Bearer realm="credits"')
        assert response.json()["code"] == "NotAuthenticated"


def test_a_revoked_token_and_a_deactivated_members_token_are_refused(
    api: ApiServer, world: World, pg_db: Database
) -> None:
    assert call(api, world, "member", "GET", "/v1/me").status_code == 200
    tokens.revoke(pg_db, world.token_ids["Mia"])
    refused = call(api, world, "member", "GET", "/v1/me")
    assert refused.status_code == 401
    assert refused.json()["detail"] == f"API token {world.token_ids['Mia']} was revoked"
    assert call(api, world, "Nora", "GET", "/v1/me").status_code == 200
    directory.deactivate(pg_db, world.members["Nora"])
    gone = call(api, world, "Nora", "GET", "/v1/me")
    assert gone.status_code == 401
    assert "deactivated" in gone.json()["detail"]


def test_another_accounts_rows_answer_exactly_as_missing_ones(api: ApiServer, world: World) -> None:
    missing_id = 999_999
    mia = world.members["Mia"]
    cases = [("/v1/accounts/{}/tree", "account", world.account),
             ("/v1/members/{}/history", "member", mia),
             ("/v1/jobs?member_id={}", "member", mia)]  # fmt: skip
    for path, kind, theirs_id in cases:
        theirs = call(api, world, "other", "GET", path.format(theirs_id))
        missing = call(api, world, "other", "GET", path.format(missing_id))
        assert theirs.status_code == missing.status_code == 404, path
        assert theirs.json()["detail"] == f"{kind} {theirs_id} does not exist"
        assert missing.json()["detail"] == f"{kind} {missing_id} does not exist"


def test_last_used_at_is_recorded_without_a_write_per_request(
    api: ApiServer, world: World, pg_db: Database
) -> None:
    for _ in range(3):
        assert call(api, world, "admin", "GET", "/v1/me").status_code == 200
    used = {t["id"]: t["last_used_at"] for t in tokens.list_tokens(pg_db)}
    assert used[world.token_ids["Adam"]] is not None
    assert used[world.token_ids["Nora"]] is None


# ---------------------------------------------------------------- reads


def test_who_am_i_tells_the_member_their_place_and_credits(api: ApiServer, world: World) -> None:
    me = call(api, world, "member", "GET", "/v1/me").json()
    assert me["kind"] == "member"
    assert me["member"] | {"id": 0} == {
        "id": 0,
        "name": "Mia",
        "role": "member",
        "workspace_id": world.sales,
        "workspace": "Sales",
        "account_id": world.account,
        "account": "Acme",
    }
    assert me["credits"] == {"available": 50, "held": 0, "total": 50}
    assert me["token"]["name"] == "Mia laptop"
    support = call(api, world, "support", "GET", "/v1/me").json()
    assert support == {"kind": "support", "token": {"id": world.token_ids["support"],
                                                    "name": "ops"},
                       "member": None, "credits": None}  # fmt: skip


def test_the_tree_and_history_show_what_moved_and_who_moved_it(
    api: ApiServer, world: World
) -> None:
    allocate(api, world, "admin", "h", member_id=world.members["Mia"], amount=4)
    tree = call(api, world, "owner", "GET", f"/v1/accounts/{world.account}/tree").json()
    sales = next(ws for ws in tree["workspaces"] if ws["id"] == world.sales)
    mia = next(m for m in sales["members"] if m["name"] == "Mia")
    assert (sales["available"], mia["available"]) == (300 - 50 - 20 - 4, 54)
    assert tree["totals"]["total"] == 1000
    history = call(
        api, world, "member", "GET", f"/v1/members/{world.members['Mia']}/history?limit=1"
    ).json()
    assert [e["amount"] for e in history["entries"]] == [4]
    assert history["entries"][0]["by"] == f"Adam (member {world.members['Adam']})"
    assert history["next_before"] is not None
    older = call(api, world, "member", "GET", f"/v1/members/{world.members['Mia']}/history"
                 f"?limit=5&before={history['next_before']}").json()  # fmt: skip
    assert [e["amount"] for e in older["entries"]] == [50]


def test_job_listings_show_each_role_only_what_it_may_read(
    api: ApiServer, world: World, pg_db: Database
) -> None:
    record_job(pg_db, "mia-1", world.members["Mia"])
    record_job(pg_db, "nora-1", world.members["Nora"])

    def ids(who: str, query: str = "") -> list[str]:
        response = call(api, world, who, "GET", f"/v1/jobs{query}")
        assert response.status_code == 200, response.text
        return sorted(j["job_id"] for j in response.json()["jobs"])

    assert ids("member") == ["mia-1"]
    assert ids("owner") == ids("admin") == ids("support") == ["mia-1", "nora-1"]
    assert ids("other") == []
    assert ids("owner", "?status=submitted&limit=1") in (["mia-1"], ["nora-1"])
    assert ids("owner", "?status=completed") == []
    bad = call(api, world, "owner", "GET", "/v1/jobs?status=lost")
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "status"
    job = call(api, world, "member", "GET", f"/v1/jobs/mia-1?member_id={world.members['Mia']}")
    assert job.status_code == 200
    assert (job.json()["status"], job.json()["cost"]) == ("submitted", 5)
    assert job.json()["hold"]["state"] == "held"


# ---------------------------------------------------------------- jobs, end to end


@pytest.fixture
def worker(stack: Stack, api: ApiServer):
    from tests.factories import SIGNING_KEY

    return stack.start_worker(CREDITS_JOB_SIGNING_KEY=SIGNING_KEY, **as_env(ALL_DELIVERED))


def read_events(response: httpx.Response, want: int, found: list[dict]) -> None:
    event: dict[str, str] = {}
    for line in response.iter_lines():
        if line.startswith(("id:", "event:", "data:")):
            key, _, value = line.partition(":")
            event[key] = value.strip()
        elif not line and "data" in event:
            found.append({"id": event["id"], "event": event["event"]} | json.loads(event["data"]))
            event = {}
            if len(found) >= want:
                return


def test_a_member_sends_a_job_and_hears_only_their_own_outcomes(
    api: ApiServer, world: World, pg_db: Database, worker: Any
) -> None:
    mia, nora = world.members["Mia"], world.members["Nora"]
    heard: list[dict] = []
    with api.client(world.tokens["Mia"]) as listener, listener.stream("GET", "/v1/events") as s:
        assert s.status_code == 200
        reader = threading.Thread(target=read_events, args=(s, 1, heard), daemon=True)
        reader.start()
        # when Nora and then Mia send an instant note through the API
        nora_sent = call(api, world, "Nora", "POST", "/v1/jobs", json=_job("hello"))
        assert nora_sent.status_code == 202
        sent = call(api, world, "member", "POST", "/v1/jobs", json=_job("hello"))
        assert sent.status_code == 202, sent.text
        assert sent.json() | {"href": ""} == {
            "job_id": "hello",
            "member_id": mia,
            "status": "queued",
            "replayed": False,
            "href": "",
        }
        reader.join(60)
    # then Mia hears her job's outcome, with her balance after it, and not Nora's
    assert [(e["member_id"], e["job_id"], e["status"]) for e in heard] == [
        (mia, "hello", "completed")
    ]
    assert heard[0]["available"] == 45 and heard[0]["event"] == "outcome"
    # and the job reads completed; sending it again replays without a second charge
    job = call(api, world, "member", "GET", sent.json()["href"]).json()
    assert (job["status"], job["cost"], job["source"]) == ("completed", 5, "instant")
    again = call(api, world, "member", "POST", "/v1/jobs", json=_job("hello"))
    assert again.status_code == 200 and again.json()["replayed"] is True
    conflict = call(api, world, "member", "POST", "/v1/jobs", json=_job("hello", "Other text"))
    assert conflict.status_code == 409 and conflict.json()["code"] == "IdempotencyConflict"
    wait_until(lambda: available(pg_db, "member", nora) == 35, 30, "Nora's job to settle")
    assert available(pg_db, "member", mia) == 45


def _job(job_id: str, message: str = "Thanks for the call!") -> dict[str, Any]:
    body = note(job_id, 1, message=message)
    del body["member_id"]
    return body


def test_a_job_the_catalog_cannot_price_is_refused_before_it_is_sent(
    api: ApiServer, world: World
) -> None:
    body = {
        "action": "gift_card",
        "brand": "Acme Coffee",
        "denomination": 7,
        "recipient": note("x", 1)["recipient"],
        "return_address": note("x", 1)["recipient"],
    }
    response = call(api, world, "member", "POST", "/v1/jobs", json=body)
    assert response.status_code == 422
    assert "denomination" in response.json()["detail"]
    unknown = call(api, world, "member", "POST", "/v1/jobs", json={"action": "fax"})
    assert unknown.status_code == 422
    assert unknown.json()["detail"].startswith("invalid job: action: unknown action 'fax'")


# ---------------------------------------------------------------- the document


def test_the_openapi_document_is_served_and_valid(api: ApiServer) -> None:
    with httpx.Client(base_url=api.url) as client:
        document = client.get("/openapi.json").json()
    validate(document)
    paths = document["paths"]
    assert {"/v1/me", "/v1/accounts/{account_id}/tree", "/v1/allocations",
            "/v1/members/{member_id}/history", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/topups",
            "/v1/events"} <= set(paths)  # fmt: skip
    for path, operations in paths.items():
        if path.startswith("/v1/"):
            for name, operation in operations.items():
                assert {"HTTPBearer"} <= {k for s in operation["security"] for k in s}, path
                assert "401" in operation["responses"], (path, name)
    allocation = paths["/v1/allocations"]["post"]
    assert any(p["name"] == "Idempotency-Key" and p["required"] for p in allocation["parameters"])
    job_body = paths["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert job_body == {"$ref": "#/components/schemas/JobRequest"}
    assert "postcard" in json.dumps(document["components"]["schemas"]["JobRequest"])


def test_many_workers_serve_one_database(stack: Stack, world: World) -> None:
    # given two server processes behind one port, as `credits serve --workers 2` runs them
    server = start_api(stack, workers=2)
    wait_until(lambda: server.log_path.read_bytes().count(b"startup complete") >= 2, 30,
               "both server processes")  # fmt: skip
    # when requests land on either process, with fresh connections
    for _ in range(20):
        with server.client(world.tokens["Olivia"]) as client:
            assert client.get("/v1/me").status_code == 200


# ---------------------------------------------------------------- the compose service


COMPOSE_SECRETS = ("POSTGRES_PASSWORD", "POSTGRES_APP_PASSWORD", "RABBITMQ_PASSWORD",
                   "REDIS_PASSWORD", "FLOWER_PASSWORD")  # fmt: skip


def test_the_compose_api_service_serves_and_passes_its_healthcheck(
    stack: Stack, world: World
) -> None:
    import subprocess

    from tests.compose.loader import load
    from tests.factories import SIGNING_KEY
    from tests.integration.api_harness import CREDITS
    from tests.integration.harness import ROOT, CeleryProcess
    from tests.services import free_port

    # given the api block of docker-compose.yml, resolved as Compose resolves it, with an
    # .env whose signing key is the workers'
    env_file = stack.tmp_path / ".env"
    env_file.write_text(
        "".join(f"{name}=pw-{name.lower()}\n" for name in COMPOSE_SECRETS)
        + f"JOB_SIGNING_KEY={SIGNING_KEY}\n"
    )
    service = load(ROOT / "docker-compose.yml", env_file=env_file)["services"]["api"]
    command = [str(a) for a in service["command"]]
    assert command[:2] == ["credits", "serve"] and "0.0.0.0" in command
    port = free_port()
    # when its own command runs here (on loopback, a free port, this test's database)
    command = [CREDITS, *command[1:]]
    command[command.index("0.0.0.0")] = "127.0.0.1"
    command[command.index("8000")] = str(port)
    signing = service["environment"]["CREDITS_JOB_SIGNING_KEY"]
    server = CeleryProcess(stack.env(CREDITS_JOB_SIGNING_KEY=signing),
                           stack.tmp_path / "compose-api.log", "api", command,
                           b"Application startup complete.")  # fmt: skip
    stack.workers.append(server.start())
    server.wait_ready(60)
    wait_until(lambda: server.log_path.read_bytes().count(b"startup complete") >= 2, 30,
               "both server processes")  # fmt: skip
    # then its healthcheck passes, and the API answers with a token
    check = [str(a).replace("localhost:8000", f"127.0.0.1:{port}") for a in
             service["healthcheck"]["test"][1:]]  # fmt: skip
    check[0] = sys.executable
    assert subprocess.run(check, timeout=30).returncode == 0
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        me = client.get("/v1/me", headers={"Authorization": f"Bearer {world.tokens['Mia']}"})
    assert me.json()["member"]["name"] == "Mia"
