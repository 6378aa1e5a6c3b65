"""``credits demo --serve``: the Team page on the demo's data, with login links."""

from __future__ import annotations

from typing import Any

from shared.config import Settings
from shared.db import Database
from shared.services import tokens

HOST = "127.0.0.1"  # the demo's tokens are printed: never listen beyond this machine


def serve_team_page(settings: Settings, world: Any, port: int, console: Any) -> None:
    """Make a token for the demo account's owner and one for a plain member, print their
    login links, and serve the API and Team page until Ctrl-C."""
    from entrypoints.api.server import server

    db = Database(settings.database_url)
    try:
        owner = tokens.create_token(db, member_id=world.members["Ava"], name="demo owner")
        member = tokens.create_token(db, member_id=world.members["Chloe"], name="demo member")
    finally:
        db.dispose()
    base = f"http://{HOST}:{port}"
    console.rule("Team page")
    console.print(
        f"Serving the API and the Team page on {base} with the demo's data (Ctrl-C stops).\n"
        "Open a link to log in; the token after '#' never reaches the server's logs.\n",
        markup=False,
    )
    console.print(f"  owner (Ava):    {base}/team/login#token={owner.token}", markup=False,
                  soft_wrap=True)  # fmt: skip
    console.print(f"  member (Chloe): {base}/team/login#token={member.token}", markup=False,
                  soft_wrap=True)  # fmt: skip
    console.print(
        "\nSend a job as Chloe and watch her badge change:\n"
        f"  curl -s {base}/v1/jobs -H 'Authorization: Bearer {member.token}' \\\n"
        '    -H \'Content-Type: application/json\' -d \'{"action": "postcard", "message": '
        '"Hi", "recipient": {"name": "Jane Roe", "line1": "1 Main St", '
        '"city": "Springfield", "country": "US"}}\'\n'
        f"API schema: {base}/openapi.json",
        markup=False,
        soft_wrap=True,
    )
    server(settings, HOST, port, log_level="warning").run()
