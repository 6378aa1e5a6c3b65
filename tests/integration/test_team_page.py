"""The Team page in real headless Chromium (Debian's ``chromium``), driven by Playwright,
against a real ``credits serve`` on PostgreSQL, and a real worker for the live badge."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.db import Database
from shared.services import ledger
from shared.services.balances import balance
from tests.factories import ALL_DELIVERED, SIGNING_KEY, as_env, note
from tests.integration.api_harness import CREDITS, ApiServer, World, seed, start_api
from tests.integration.harness import ROOT, CeleryProcess, Stack
from tests.services import free_port, missing, wait_for_port

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip
SCREENSHOT = ROOT / "docs" / "team-page.png"
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        missing(f"{CHROMIUM} is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=CHROMIUM_ARGS)  # fmt: skip
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def world(pg_db: Database) -> World:
    return seed(pg_db)


@pytest.fixture
def api(stack: Stack, world: World) -> ApiServer:
    return start_api(stack)


@pytest.fixture
def page(browser: Any, api: ApiServer) -> Iterator[Any]:
    context = browser.new_context(base_url=api.url, viewport={"width": 1200, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    finally:
        context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def log_in(page: Any, token: str) -> None:
    """Follow a login link: the token rides after '#', the page posts it and moves on."""
    page.goto(f"/team/login#token={token}")
    page.wait_for_url("**/team")
    assert "#" not in page.url and "credits_" not in page.url


def edit(page: Any, cell: str, value: str) -> None:
    """Click a number, type a new one, press Enter."""
    page.locator(f"{cell} button.number").click()
    field = page.locator(f"{cell} input.number-input")
    field.fill(value)
    field.press("Enter")


def number(page: Any, cell: str) -> Any:
    return page.locator(f"{cell} button.number")


def test_an_owner_sets_team_and_member_credits_by_typing(
    page: Any, world: World, pg_db: Database
) -> None:
    from playwright.sync_api import expect

    sales = f"#workspace-{world.sales}-available"
    mia = f"#member-{world.members['Mia']}"
    # given the owner, logged in with a link
    log_in(page, world.tokens["Olivia"])
    expect(page.locator("h1")).to_have_text("Team members")
    expect(page.locator("#account-available")).to_have_text("500")
    expect(number(page, sales)).to_have_text("250")
    # when she makes Sales' team credits 280, then Mia's credits 75
    edit(page, sales, "280")
    expect(number(page, sales)).to_have_text("280")
    expect(page.locator("#account-available")).to_have_text("470")
    edit(page, mia, "75")
    # then the tree shows it, and the ledger agrees
    expect(number(page, mia)).to_have_text("75")
    expect(number(page, sales)).to_have_text("255")
    assert balance(pg_db, "member", world.members["Mia"]).available == 75
    assert balance(pg_db, "workspace", world.sales).available == 255
    assert balance(pg_db, "account", world.account).available == 470
    # and the page is worth looking at
    page.locator(f"{mia} .saved").wait_for(state="detached")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000


def test_an_over_allocation_shows_its_error_inline_and_changes_nothing(
    page: Any, world: World, pg_db: Database
) -> None:
    from playwright.sync_api import expect

    mia, olivia = f"#member-{world.members['Mia']}", f"#member-{world.members['Olivia']}"
    ledger.allocate(pg_db, "member", world.members["Olivia"], amount=20)
    log_in(page, world.tokens["Adam"])  # Sales' admin
    # when he asks for more than the Sales pool holds
    edit(page, mia, "100000")
    # then the refusal shows under the number, and no balance moved
    error = page.locator(f"{mia} .cell-error")
    expect(error).to_have_text(
        f"workspace {world.sales} (Sales) has 230 credits available, 99950 needed"
    )
    assert balance(pg_db, "member", world.members["Mia"]).available == 50
    assert balance(pg_db, "workspace", world.sales).available == 230
    # and Esc puts the old number back
    page.locator(f"{mia} input.number-input").press("Escape")
    expect(number(page, mia)).to_have_text("50")
    expect(error).to_be_hidden()
    # a refusal by role shows the same way: an admin may not take an owner's credits
    edit(page, olivia, "5")
    expect(number(page, olivia)).to_be_hidden()
    edit_error = page.locator(f"{olivia} .cell-error")
    expect(edit_error).to_contain_text("may not take credits from member")
    # and a typo is caught before anything is sent
    page.locator(f"{mia} button.number").click()
    page.locator(f"{mia} input.number-input").fill("12x")
    page.locator(f"{mia} input.number-input").press("Enter")
    expect(page.locator(f"{mia} .cell-error")).to_have_text(
        "Type a whole number of credits, 0 or more."
    )
    assert balance(pg_db, "member", world.members["Olivia"]).available == 20


def test_a_member_sees_only_their_own_row(page: Any, world: World) -> None:
    from playwright.sync_api import expect

    log_in(page, world.tokens["Mia"])
    rows = page.locator("tr[data-member-id]")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Mia")
    expect(page.locator("#credits-badge #badge-available")).to_have_text("50")
    assert page.locator(".summary").count() == 0  # no account or team pools
    assert page.locator("button.number").count() == 0  # nothing to edit
    body = page.locator("body").inner_text()
    for other in ("Olivia", "Adam", "Nora", "Gus", "Customer Success", "Globex"):
        assert other not in body


def test_the_badge_follows_the_viewers_jobs_as_a_real_worker_settles_them(
    page: Any, world: World, api: ApiServer, stack: Stack
) -> None:
    from playwright.sync_api import expect

    stack.start_worker(CREDITS_JOB_SIGNING_KEY=SIGNING_KEY, **as_env(ALL_DELIVERED))
    log_in(page, world.tokens["Mia"])
    badge = page.locator("#badge-available")
    expect(badge).to_have_text("50")
    # when Mia's flow sends a handwritten note (5 credits) and the worker delivers it
    body = note("badge-1", world.members["Mia"])
    with api.client(world.tokens["Mia"]) as client:
        assert client.post("/v1/jobs", json=body).status_code == 202
    # then the badge and her row change without a reload
    expect(badge).to_have_text("45", timeout=60_000)
    expect(page.locator(f"#member-{world.members['Mia']} .available")).to_have_text("45")


def test_login_sets_a_strict_http_only_session_and_changes_need_the_csrf_token(
    page: Any, world: World, api: ApiServer
) -> None:
    from playwright.sync_api import expect

    page.goto("/team")
    page.wait_for_url("**/team/login")
    page.locator("#token").fill("credits_1_" + "x" * 43)
    page.locator("button[type=submit]").click()
    expect(page.locator("#login-error")).to_contain_text("invalid API token")
    log_in(page, world.tokens["Olivia"])
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "credits_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert world.tokens["Olivia"] not in cookie["value"]
    # the cookie alone cannot change anything
    with api.client(cookies={"credits_session": cookie["value"]}) as client:
        assert client.get("/v1/me").json()["member"]["name"] == "Olivia"
        body = {"workspace_id": world.sales, "set": 1}
        refused = client.post("/v1/allocations", json=body, headers={"Idempotency-Key": "k"})
        assert refused.status_code == 403
        assert refused.json()["detail"] == "missing or wrong X-CSRF-Token header: reload the page"
        csrf = page.locator('meta[name="csrf-token"]').get_attribute("content")
        cross = client.post(
            "/v1/allocations",
            json=body,
            headers={
                "Idempotency-Key": "k",
                "X-CSRF-Token": csrf,
                "Origin": "https://evil.example",
            },
        )
        assert cross.status_code == 403
    # signing out ends the session
    page.locator("#logout").click()
    page.wait_for_url("**/team/login")
    page.goto("/team")
    page.wait_for_url("**/team/login")


def test_the_page_is_served_with_a_strict_content_security_policy(api: ApiServer) -> None:
    with api.client() as client:
        response = client.get("/team/login")
    assert response.status_code == 200
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "<script>" not in response.text  # no inline script for the policy to allow


def test_demo_serve_prints_login_links_that_open_the_demo_team(
    browser: Any, tmp_path: Path
) -> None:
    import re

    from playwright.sync_api import expect

    # given `credits demo --serve`: SQLite, in-process broker and Redis, no servers at all
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITS_")}
    demo = CeleryProcess(env, tmp_path / "demo.log", "demo", [CREDITS, "demo", "--serve",
                         "--jobs", "30", "--port", str(port)], b"member (Chloe):",
                         cwd=tmp_path)  # fmt: skip
    demo.start()
    try:
        demo.wait_ready(180)
        log = demo.log_path.read_text()
        links = dict(re.findall(r"(owner|member) \(\w+\):\s+(http://127\.0\.0\.1:\d+/team/login#"
                                r"token=credits_[\w-]+)", log))  # fmt: skip
        assert set(links) == {"owner", "member"}, log[-2000:]
        wait_for_port(port, timeout_s=30)
        # when the member follows her link: her own row and badge only
        context = browser.new_context()
        page = context.new_page()
        page.goto(links["member"])
        page.wait_for_url("**/team")
        expect(page.locator("tr[data-member-id]")).to_have_count(1)
        expect(page.locator("tr[data-member-id]")).to_contain_text("Chloe")
        context.close()
        # and the owner's link shows the demo account's whole tree
        context = browser.new_context()
        page = context.new_page()
        page.goto(links["owner"])
        page.wait_for_url("**/team")
        expect(page.locator("section.workspace")).to_have_count(2)
        expect(page.locator(".stat-note").first).to_contain_text("Northwind Outreach")
        context.close()
    finally:
        demo.stop()
